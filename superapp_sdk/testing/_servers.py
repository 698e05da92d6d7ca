"""Real HTTP servers on loopback for tests and benchmarks.

:class:`UvicornServer` serves any ASGI application with uvicorn on a free loopback port
from a background thread; :func:`echo_app` is a dependency-free ASGI app to point it at::

    with UvicornServer(echo_app) as server:
        assert httpx.get(server.url + "/ping").json() == {"ok": True, "method": "GET",
                                                          "path": "/ping"}
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ASGIApp", "UvicornServer", "echo_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI app: ``GET`` or ``POST`` on any path answers 200 with
    ``{"ok": true, "method": ..., "path": ...}``; other methods get 405.

    It supports the lifespan protocol, so uvicorn starts it without complaint.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while True:  # drain the request body before answering
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    method = scope["method"]
    if method in ("GET", "POST"):
        status, payload = 200, {"ok": True, "method": method, "path": scope["path"]}
    else:
        status, payload = 405, {"ok": False, "error": f"method {method} not allowed"}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 405:
        headers.append((b"allow", b"GET, POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class UvicornServer:
    """Serve an ASGI app with a real uvicorn server on loopback, from a daemon thread.

    Entering the ``with`` block binds the port (``port=0``: a free one), starts uvicorn
    and waits, at most ``startup_timeout`` seconds, until it accepts connections; leaving
    it asks uvicorn to exit, waits for in-flight requests (at most ``shutdown_timeout``
    seconds, then forces the exit) and joins the thread.

    Args:
        app: any ASGI 3 application (FastAPI, Starlette, :func:`echo_app`, a simulator).
        host: a loopback address, ``"127.0.0.1"`` or ``"::1"``.
        port: the port, or 0 for a free one.
        lifespan: uvicorn's ``lifespan`` setting: ``"auto"``, ``"on"`` or ``"off"``.
        startup_timeout: seconds (> 0) to wait for the server to accept connections.
        shutdown_timeout: seconds (> 0) to wait for a clean stop.

    Raises:
        ImportError: uvicorn is not installed (``pip install 'superapp-sdk[examples]'``).
        RuntimeError: the server did not start (or stop) in time.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: Literal["auto", "on", "off"] = "auto",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', got {lifespan!r}")
        for name, value in (
            ("startup_timeout", startup_timeout),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.app = app
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.lifespan = lifespan
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("UvicornServer is not started (use it in a with block)")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind, start uvicorn in a thread and wait until it accepts connections."""
        if self._thread is not None:
            return
        try:
            import uvicorn  # an optional dependency (extra "examples"): imported on use
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "UvicornServer needs uvicorn: pip install 'superapp-sdk[examples]'"
            ) from exc
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Inherited by accepted sockets on Linux: without it, a response written as
            # headers + body waits on Nagle and the client's delayed ACK (~40 ms a call).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan=self.lifespan,
            log_level="warning",
            log_config=None,  # leave the process's logging configuration alone
            access_log=False,
            ws="none",
            http="h11",
            loop="asyncio",
            # Leave time, within our join timeout, for uvicorn to cancel stuck requests.
            timeout_graceful_shutdown=max(1, int(self.shutdown_timeout / 2)),
        )
        started = threading.Event()
        server = _make_server(config, started)
        self._server = server
        self._thread = threading.Thread(
            target=self._run,
            args=(server, sock, started),
            name=f"uvicorn:{self._port}",
            daemon=True,
        )
        self._thread.start()
        # Wait for both: uvicorn's own flag (sockets listening, lifespan done) or the
        # thread ending early with an error.
        if not started.wait(self.startup_timeout) or not server.started:
            self.stop()
            error = self._error
            why = "failed to start" if error is not None else "did not start in time"
            raise RuntimeError(
                f"uvicorn {why} on {self.host}:{self._port} (startup_timeout="
                f"{self.startup_timeout} s)"
            ) from error

    def _run(self, server: uvicorn.Server, sock: socket.socket, started: threading.Event) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self._error = exc
            started.set()

    def stop(self) -> None:
        """Ask uvicorn to exit, join the thread and release the socket."""
        thread, server = self._thread, self._server
        if thread is not None and server is not None:
            server.should_exit = True
            thread.join(self.shutdown_timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(self.shutdown_timeout)
            if thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self._port} did not stop")
        self._thread = None
        self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

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
        where = f"{self.host}:{self._port}" if self._thread is not None else "not started"
        name = getattr(self.app, "__qualname__", type(self.app).__qualname__)
        return f"UvicornServer({name}, {where})"


def _make_server(config: uvicorn.Config, started: threading.Event) -> uvicorn.Server:
    """A uvicorn server that sets ``started`` once it listens (or gives up starting)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                started.set()

    return _Server(config)
