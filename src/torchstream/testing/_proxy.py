"""A TCP proxy on loopback that can black-hole its connections, for network-fault tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from torchstream.testing._rtsp import free_port

__all__ = ["TcpProxy"]

_CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``, one upstream connection per
    client connection, on an asyncio loop in its own thread (``ts/test/tcp-proxy``).

    :meth:`blackhole` stops moving bytes in both directions without closing anything: what a
    network partition looks like to both ends (connections stay open, nothing arrives; bytes
    wait in the proxy's socket buffers, as a partitioned TCP link keeps them for
    retransmission). New connections are accepted but not served while it lasts.
    :meth:`heal` moves bytes again. :meth:`drop_connections` closes every connection (a
    reset); the proxy keeps listening. Usable from blocking and async tests alike; a context
    manager; ``close`` is idempotent.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port or free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flow: asyncio.Event | None = None
        self.connections = 0
        """Client connections accepted so far."""

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Listen (returns once listening)."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="ts/test/tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._flow = asyncio.Event()
        self._flow.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            assert self._flow is not None
            await self._flow.wait()
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except OSError:
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flow is not None
        try:
            while True:
                # Wait for the flow *before* reading: during a black hole bytes stay in the
                # kernel's buffers instead of being read and lost.
                await self._flow.wait()
                data = await reader.read(_CHUNK_BYTES)
                if not data:
                    break
                await self._flow.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def _call(self, function: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def run() -> None:
            try:
                function()  # type: ignore[operator]
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(5)

    def blackhole(self) -> None:
        """Stop moving bytes (connections stay open)."""
        self._flowing.clear()
        self._call(lambda: self._flow.clear() if self._flow else None)

    def heal(self) -> None:
        """Move bytes again after :meth:`blackhole`."""
        self._flowing.set()
        self._call(lambda: self._flow.set() if self._flow else None)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def drop_connections(self) -> None:
        """Close every open connection, both sides."""

        def drop() -> None:
            for writer in list(self._writers):
                writer.close()

        self._call(drop)

    def close(self) -> None:
        """Stop listening, close every connection and end the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._flow is not None:
                self._flow.set()  # wake blocked pipes so their tasks end
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
