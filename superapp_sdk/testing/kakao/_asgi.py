"""A tiny ASGI toolkit for provider simulators: routing, JSON bodies, fire controls.

No framework: the simulators ship inside the SDK's ``testing`` package and must run with
the runtime dependencies alone.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = [
    "App",
    "Fire",
    "FireControl",
    "Request",
    "Response",
    "Route",
    "json_response",
]

# The ASGI 3 callable types as httpx.ASGITransport and uvicorn declare them, so an App
# type-checks wherever an ASGI application is expected.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as a simulator handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        """The body parsed as ``application/x-www-form-urlencoded``."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response from a simulator handler."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json;charset=UTF-8"),)


def json_response(
    data: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response."""
    extra = tuple((k.lower(), v) for k, v in (headers or {}).items())
    return Response(
        status,
        json.dumps(data, ensure_ascii=False).encode("utf-8"),
        (("content-type", "application/json;charset=UTF-8"), *extra),
    )


Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """``method`` + ``path`` pattern (``{name}`` segments) -> handler, for one capability.

    ``write`` marks an endpoint that changes the provider's state (a charge, a message, a
    token grant); the "apply then lose" fire modes act on those alone.
    """

    method: str
    pattern: str
    handler: Handler
    capability: str
    write: bool = False

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when this route matches, else ``None``."""
        if method != self.method:
            return None
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern) + "$"
        m = re.match(regex, path)
        return m.groupdict() if m else None


class Fire(enum.Enum):
    """How a burning service behaves at the HTTP level.

    - ``NORMAL``: answers as the real service does.
    - ``ERROR_5XX``: answers an HTML 503 page without running anything.
    - ``SLOW``: answers after ``slow_seconds``; ``HANG``: holds each request
      ``hang_seconds`` before serving it.
    - ``APPLY_500``: a write (a :class:`Route` with ``write=True``) is executed, its effect
      applied, and then answered with an HTML 500 page instead of its real answer.
    - ``APPLY_LATE``: a write is executed at once and its real answer sent only after
      ``slow_seconds``, so a client with a shorter timeout gives up on a write that ran.

    In the two ``APPLY_`` modes reads (lookups such as KakaoPay's ``order``) are served
    normally. :meth:`FireControl.lose_next` loses only the next few answers.

    Socket-level faults (refuse, accept-and-hang, drop, lose the answer) are applied in
    front of a real server by ``superapp_sdk.testing.kakao.DataCenterServer``; in-process
    tests inject them with ``FaultTransport``.
    """

    NORMAL = "normal"
    ERROR_5XX = "5xx"
    SLOW = "slow"
    HANG = "hang"
    APPLY_500 = "apply_500"
    APPLY_LATE = "apply_late"


#: The fire modes that execute a write and then lose its answer.
_APPLY_MODES = frozenset({Fire.APPLY_500, Fire.APPLY_LATE})


class FireControl:
    """Per-capability fire switches shared by the simulator and its test. Thread-safe.

    A capability is in one steady mode (:meth:`set`, :meth:`burn`) and may also owe a
    number of lost write answers (:meth:`lose_next`), which are spent first.
    """

    def __init__(self, *, slow_seconds: float = 2.0, hang_seconds: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._modes: dict[str, Fire] = {}
        self._losses: dict[str, list[Fire]] = {}
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds
        self._released = threading.Event()

    def set(self, capability: str, mode: Fire) -> None:
        """Put one capability (``"chat"``, ``"payment"``, ...) into ``mode``."""
        with self._lock:
            self._modes[capability] = mode

    def burn(self, mode: Fire = Fire.ERROR_5XX, capabilities: Iterable[str] = ()) -> None:
        """Set every listed capability (all four when none is given) to ``mode``."""
        for c in tuple(capabilities) or ("chat", "payment", "identity", "mobility"):
            self.set(c, mode)

    def lose_next(self, capability: str, mode: Fire, *, count: int = 1) -> None:
        """Lose the answers of the next ``count`` writes to ``capability`` in ``mode``
        (``Fire.APPLY_500`` or ``Fire.APPLY_LATE``): each is executed and its answer lost;
        after them the capability behaves as its steady mode says again. Reads neither
        consume nor see them. Calls add up: they queue behind losses still owed.

        Raises:
            ValueError: ``mode`` is not an ``APPLY_`` mode, or ``count`` < 1.
        """
        if mode not in _APPLY_MODES:
            raise ValueError(f"mode must be Fire.APPLY_500 or Fire.APPLY_LATE, got {mode!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        with self._lock:
            self._losses.setdefault(capability, []).extend([mode] * count)

    def owed(self, capability: str) -> int:
        """How many write answers of ``capability`` :meth:`lose_next` still has to lose."""
        with self._lock:
            return len(self._losses.get(capability, ()))

    def restore(self) -> None:
        """Put every capability back to normal, dropping the losses still owed."""
        with self._lock:
            self._modes.clear()
            self._losses.clear()

    def mode(self, capability: str) -> Fire:
        """The current steady mode of ``capability``."""
        with self._lock:
            return self._modes.get(capability, Fire.NORMAL)

    def take(self, route: Route) -> Fire:
        """The mode one request to ``route`` is served in, spending an owed loss when the
        route is a write. An ``APPLY_`` mode serves reads normally."""
        with self._lock:
            owed = self._losses.get(route.capability)
            if route.write and owed:
                return owed.pop(0)
            mode = self._modes.get(route.capability, Fire.NORMAL)
        if mode in _APPLY_MODES and not route.write:
            return Fire.NORMAL
        return mode


class App:
    """An ASGI application made of routes, with fire controls applied per capability."""

    def __init__(self, routes: Iterable[Route], fire: FireControl | None = None) -> None:
        self.routes = list(routes)
        self.fire = fire or FireControl()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        response = await self.dispatch(scope, body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def dispatch(self, scope: Scope, body: bytes) -> Response:
        """Route one request, applying the fire mode of the route's capability."""
        method = scope["method"]
        path = scope["path"]
        for route in self.routes:
            params = route.match(method, path)
            if params is None:
                continue
            mode = self.fire.take(route)
            if mode is Fire.ERROR_5XX:
                return _html(503, "Service Unavailable")
            if mode is Fire.SLOW:
                await asyncio.sleep(self.fire.slow_seconds)
            elif mode is Fire.HANG:
                await asyncio.sleep(self.fire.hang_seconds)
            request = Request(
                method=method,
                path=path,
                query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
                headers={
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                },
                body=body,
                params=params,
            )
            result = route.handler(request)
            if not isinstance(result, Response):
                result = await result
            if mode is Fire.APPLY_500:
                return _html(500, "Internal Server Error")
            if mode is Fire.APPLY_LATE:
                await asyncio.sleep(self.fire.slow_seconds)
            return result
        return json_response({"msg": f"no route for {method} {path}", "code": -404}, status=404)


def _html(status: int, reason: str) -> Response:
    """An error page as a load balancer or web server sends it."""
    body = f"<html><body><h1>{status} {reason}</h1></body></html>".encode()
    return Response(status, body, (("content-type", "text/html"),))
