"""API keys: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["Keys"]


class Keys:
    """The keys a server accepts; none means every request is allowed."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accept(self, key: str | None) -> bool:
        if not self._keys:
            return True
        if not key:
            return False
        given = key.encode()
        found = False
        for known in self._keys:  # every key compared: the time says nothing about which
            found |= hmac.compare_digest(given, known)
        return found

    def accept_header(self, header: str | None) -> bool:
        """For routes outside FastAPI's dependencies (websockets): the raw header."""
        scheme, _, key = (header or "").partition(" ")
        return self.accept(key.strip() if scheme.lower() == "bearer" else None)

    def dependency(self, refuse: Callable[[], Exception]) -> Callable[..., Awaitable[None]]:
        """A FastAPI dependency that raises ``refuse()`` without a right key (documented as
        HTTP bearer authentication in the OpenAPI schema)."""
        bearer = HTTPBearer(
            auto_error=False,
            description="API key (`Authorization: Bearer <key>`), when the server has keys.",
        )

        async def authorized(
            credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
        ) -> None:
            if not self.accept(credentials.credentials if credentials else None):
                raise refuse()

        return authorized
