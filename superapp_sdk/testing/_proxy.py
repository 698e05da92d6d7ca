"""A TCP proxy on loopback that can set the server behind it on fire.

::

    with UvicornServer(app) as server, FaultProxy(server.port) as proxy:
        client = httpx.Client(base_url=proxy.url)
        ...                       # healthy: bytes flow both ways
        proxy.set(Burn.HANG)      # accept and never answer: the data center is dark
        proxy.set(Burn.REFUSE)    # connection refused
        proxy.set(Burn.RESET)     # accept, then reset
        proxy.set(Burn.LOSE_RESET)  # deliver every request, reset as its answer starts
        proxy.set(Burn.LOSE_HANG)   # deliver every request, never pass the answer on
        proxy.set(Burn.LOSE_RESET, count=1)  # lose one answer, then pass traffic again
        proxy.set(Burn.PASS)      # restored

A mode change applies to open keep-alive connections too: a hanging proxy stops
forwarding on every connection, which is what a client with a warm connection pool sees
when a data center loses power. What was sent into the dark is never delivered later:
when the proxy passes traffic again, connections that were held are closed.

The ``LOSE_`` modes are the other half of an outage: the request reaches the server, which
executes it (a payment is charged), and its answer is lost on the way back. A connection
that lost an answer stays lost: ``LOSE_HANG`` keeps it open and silent until the client
closes it, even after the proxy passes traffic again, as a client waiting on a dead
connection sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = ["Burn", "FaultProxy"]


class Burn(enum.Enum):
    """What the proxy does with traffic.

    - ``PASS``: bytes flow both ways.
    - ``HANG``: accept and never answer; nothing is delivered to the server.
    - ``REFUSE``: refuse connections (the listener is closed).
    - ``RESET``: accept, then reset; open connections are reset at once.
    - ``LOSE_RESET``: deliver the client's bytes to the server, discard its answer, and
      reset (RST) the client's connection as soon as the answer starts arriving.
    - ``LOSE_HANG``: deliver the client's bytes, discard the answer, and keep the client's
      connection open and silent.
    """

    PASS = "pass"  # noqa: S105 - a traffic mode, not a password
    HANG = "hang"
    REFUSE = "refuse"
    RESET = "reset"
    LOSE_RESET = "lose_reset"
    LOSE_HANG = "lose_hang"


#: The modes that deliver requests and lose the answers.
_LOSING = frozenset({Burn.LOSE_RESET, Burn.LOSE_HANG})
#: The modes in which the client's bytes reach the server.
_DELIVERING = _LOSING | {Burn.PASS}


@dataclass(slots=True)
class _Link:
    """One client connection through the proxy: has it lost an answer?"""

    lost: bool = False


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_port``, or fails as told (see the module
    docstring). Runs its own event loop in a daemon thread."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (host, upstream_port)
        self.host = host
        self._requested_port = port
        self._mode = Burn.PASS
        self._losses_left: int | None = None
        #: How many answers the ``LOSE_`` modes have discarded.
        self.lost = 0
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

    def set(self, mode: Burn, *, count: int | None = None) -> None:
        """Switch mode; takes effect for new and open connections.

        Args:
            mode: the new mode.
            count: with a ``LOSE_`` mode only: lose the next ``count`` answers (>= 1), one
                per connection that gets an answer, then pass traffic again.

        Raises:
            ValueError: ``count`` with a mode other than ``LOSE_``, or below 1.
        """
        if count is not None:
            if mode not in _LOSING:
                raise ValueError(f"count applies to LOSE_RESET and LOSE_HANG only, not {mode}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"count must be an int >= 1, got {count!r}")
        self._call(self._set(mode, count))

    async def _set(self, mode: Burn, count: int | None = None) -> None:
        old, self._mode = self._mode, mode
        self._losses_left = count
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
        left = "" if self._losses_left is None else f", losses_left={self._losses_left}"
        return (
            f"FaultProxy(port={self.port}, upstream={self.upstream[1]}, "
            f"mode={self._mode.value}{left})"
        )

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
            link = _Link()
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer), self._answer(up_reader, writer, link)
                )
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

    def _passing(self, modes: frozenset[Burn] = frozenset({Burn.PASS})) -> bool:
        return self._mode in modes and not self._closing

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry the client's bytes to the server."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not self._passing(_DELIVERING):
                    await self._dark()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _write_eof(writer)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Carry the server's bytes to the client, or lose them."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    if self._mode is Burn.HANG and not self._closing:
                        # The server closed its side (uvicorn drops idle keep-alive
                        # connections after 5 s) while the data center is dark: a dark
                        # host sends no FIN, so the client keeps waiting.
                        await self._dark()
                    break
                if link.lost:
                    continue
                if self._passing(_LOSING):
                    link.lost = True
                    mode = self._mode
                    self._spend_loss()
                    if mode is Burn.LOSE_RESET:
                        _abort(writer, reset=True)
                        return
                    continue
                if not self._passing():
                    await self._dark()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # A lost answer leaves the client waiting: no FIN, even when the server
            # closes its side (uvicorn drops idle keep-alive connections after 5 s).
            if not link.lost:
                _write_eof(writer)

    def _spend_loss(self) -> None:
        self.lost += 1
        if self._losses_left is None:
            return
        self._losses_left -= 1
        if self._losses_left == 0:
            assert self._resume is not None
            self._mode, self._losses_left = Burn.PASS, None
            self._resume.set()

    async def _dark(self) -> None:
        # A dark data center: keep the connection, answer nothing. Bytes that arrived
        # while it was dark are never delivered: its hosts restart, and connections from
        # before the outage end instead of resuming.
        assert self._resume is not None
        await self._resume.wait()


def _write_eof(writer: asyncio.StreamWriter) -> None:
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
