"""A TCP proxy on loopback that can set the server behind it on fire.

::

    with UvicornServer(app) as server, FaultProxy(server.port) as proxy:
        client = httpx.Client(base_url=proxy.url)
        ...                       # healthy: bytes flow both ways
        proxy.set(Burn.HANG)      # accept and never answer: the data center is dark
        proxy.set(Burn.REFUSE)    # connection refused
        proxy.set(Burn.RESET)     # accept, then reset
        proxy.set(Burn.PASS)      # restored

A mode change applies to open keep-alive connections too: a hanging proxy stops
forwarding on every connection, which is what a client with a warm connection pool sees
when a data center loses power. What was sent into the dark is never delivered later:
when the proxy passes traffic again, connections that were held are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["Burn", "FaultProxy"]


class Burn(enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"  # noqa: S105 - a traffic mode, not a password
    HANG = "hang"
    REFUSE = "refuse"
    RESET = "reset"


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_port``, or fails as told (see the module
    docstring). Runs its own event loop in a daemon thread."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (host, upstream_port)
        self.host = host
        self._requested_port = port
        self._mode = Burn.PASS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resume: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False
        self.port = 0
        self.connections = 0

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy."""
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> Burn:
        """The current mode."""
        return self._mode

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start listening; returns once the port is bound."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="superapp-fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")

    async def _listen(self) -> None:
        if self._resume is None:
            self._resume = asyncio.Event()
            self._resume.set()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port or self._requested_port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock, backlog=256)

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def set(self, mode: Burn) -> None:
        """Switch mode; takes effect for new and open connections."""
        self._call(self._set(mode))

    async def _set(self, mode: Burn) -> None:
        old, self._mode = self._mode, mode
        assert self._resume is not None
        if mode is Burn.PASS:
            self._resume.set()
        else:
            self._resume.clear()
        if mode is Burn.REFUSE and old is not Burn.REFUSE:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            self._drop_all(reset=True)
        elif old is Burn.REFUSE and mode is not Burn.REFUSE:
            await self._listen()
        if mode is Burn.RESET:
            self._drop_all(reset=True)

    def _drop_all(self, *, reset: bool) -> None:
        for w in list(self._writers):
            _abort(w, reset=reset)
        self._writers.clear()

    def stop(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._closing = True
            if self._server is not None:
                self._server.close()
            if self._resume is not None:
                self._resume.set()
            self._drop_all(reset=False)
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy(port={self.port}, upstream={self.upstream[1]}, mode={self._mode.value})"

    # -- connections -------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self.connections += 1
        self._writers.add(writer)
        try:
            if self._mode is Burn.RESET:
                _abort(writer, reset=True)
                return
            if self._mode is Burn.HANG:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _abort(writer, reset=True)
                return
            self._writers.add(up_writer)
            for w in (writer, up_writer):
                _nodelay(w)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        try:
            while not self._closing and await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass

    def _passing(self) -> bool:
        return self._mode is Burn.PASS and not self._closing

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._resume is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not self._passing():
                    # A dark data center: keep the connection, answer nothing. Bytes that
                    # arrived while it was dark are never delivered: its hosts restart, and
                    # connections from before the outage end instead of resuming.
                    await self._resume.wait()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    # A proxy forwards whatever arrives as it arrives; with Nagle on, a response written
    # as headers then body waits for the client's delayed ACK (~40 ms) on the second part.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    transport.abort()
