"""JSON log lines for log collectors. The library never configures logging itself: the CLI
(or your program) installs this formatter on a handler."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``thread`` (torchstream names its threads ``ts/stage/<name>`` and so on), ``message``,
    ``exception`` when there is one, and any ``extra=`` fields (``trace_id`` and ``span_id``
    among them when tracing adds them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(*, level: str = "warning", json_lines: bool = False) -> None:
    """What the CLI does: one stderr handler on the root logger, text or JSON lines. Like
    ``logging.basicConfig``, it does nothing when the root logger already has handlers (an
    embedding program configured logging itself)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"level must be debug, info, warning or error, got {level!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=numeric, handlers=[handler])
