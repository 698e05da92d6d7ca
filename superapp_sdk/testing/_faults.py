"""Fault injection at the httpx transport seam.

:class:`FaultTransport` (sync) and :class:`AsyncFaultTransport` wrap another transport and,
following a *schedule*, answer some requests with a fault instead of forwarding them::

    transport = FaultTransport(sequence(Status(503, retry_after=1), Error()))
    with httpx.Client(transport=transport) as client:
        client.get("https://kapi.kakao.com/v1/user")   # 503, Retry-After: 1
        client.get("https://kapi.kakao.com/v1/user")   # raises httpx.ConnectError
        client.get("https://kapi.kakao.com/v1/user")   # 200 {} from the inner transport

A schedule maps ``(index, request)`` to a fault or ``None`` (pass through). It is built with
:func:`always`, :func:`sequence`, :func:`every`, :func:`after`, :func:`for_paths`,
:func:`for_hosts` and :func:`when`, combined with ``|`` (the first that names a fault wins);
a plain list is a :func:`sequence`, a single fault is :func:`always`, and any callable with
the same signature works too.

Lost answers: :class:`Lost` forwards the request, so the server executes it, and then
loses the answer: ``Lost("reset")`` raises :class:`httpx.ReadError` (a reset after the
write), ``Lost("hang")`` waits out the read timeout, ``Lost("500")`` answers an HTML 500
page instead, ``Lost("late", seconds=3)`` answers after 3 s or times out first, and
``Lost("refuse_next")`` resets and then refuses the next request on the transport, as a
host that crashed right after executing. These are the faults an at-most-once write must
survive without executing twice::

    transport = AsyncFaultTransport([Lost("reset")], inner=httpx.ASGITransport(app))
    # the first POST executes in ``app`` and raises httpx.ReadError; the rest pass

Time: with a :class:`~superapp_sdk.testing.FakeClock`, latency and hangs advance the fake
clock and return at once; without one they really wait (``time.sleep`` / ``asyncio.sleep``),
hangs bounded by ``max_hang`` and cut short by ``close()``.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar, assert_never

import httpx

from superapp_sdk.testing._clock import FakeClock

__all__ = [
    "AsyncFaultTransport",
    "Error",
    "Fault",
    "FaultTransport",
    "Hang",
    "Latency",
    "Lost",
    "LostHow",
    "Malformed",
    "Reset",
    "Schedule",
    "ScheduleLike",
    "Status",
    "after",
    "always",
    "every",
    "for_hosts",
    "for_paths",
    "sequence",
    "when",
]


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class Error:
    """Raise ``exc_type`` instead of sending: the request never reached the server.

    Args:
        exc_type: a subclass of :class:`httpx.RequestError` (default
            :class:`httpx.ConnectError`, as when the host refuses or is unreachable).
        message: the exception message.
    """

    exc_type: type[httpx.RequestError] = httpx.ConnectError
    message: str = "injected fault: connection failed"

    def __post_init__(self) -> None:
        if not (isinstance(self.exc_type, type) and issubclass(self.exc_type, httpx.RequestError)):
            raise ValueError(
                f"exc_type must be a subclass of httpx.RequestError, got {self.exc_type!r}"
            )

    def __repr__(self) -> str:
        return f"Error({_qualname(self.exc_type)})"


@dataclass(frozen=True, slots=True)
class Status:
    """Answer with an HTTP status instead of forwarding (the server never sees the request).

    Args:
        code: the status code, 100-599 (default 503).
        headers: extra response headers, as a mapping or ``(name, value)`` pairs.
        body: the response body.
        retry_after: when given, adds ``Retry-After`` with this many whole seconds
            (RFC 9110 section 10.2.3, delay-seconds form).

    Example: ``Status(429, retry_after=2)``, ``Status(502, body=b"<html>...")``.
    """

    code: int = 503
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    body: bytes = b""
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 599:
            raise ValueError(f"code must be in 100..599, got {self.code!r}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {self.retry_after!r}")
        pairs = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        # A tuple keeps the fault hashable, so it can key the transport's counts.
        object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in pairs))

    def header_items(self) -> list[tuple[str, str]]:
        """The response headers, ``Retry-After`` included."""
        items = list(self.headers.items() if isinstance(self.headers, Mapping) else self.headers)
        if self.retry_after is not None:
            items.append(("Retry-After", str(int(self.retry_after))))
        return items

    def __repr__(self) -> str:
        parts = [str(self.code)]
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after!r}")
        if self.headers:
            parts.append(f"headers={dict(self.headers)!r}")
        if self.body:
            parts.append(f"body={_short(self.body)}")
        return f"Status({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Latency:
    """Wait ``seconds`` before forwarding the request.

    When ``seconds`` is longer than the request's read timeout, the wait stops at the
    timeout and :class:`httpx.ReadTimeout` is raised without forwarding, as a real slow
    server would make httpx do.
    """

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds!r}")

    def __repr__(self) -> str:
        return f"Latency({self.seconds!r})"


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer: wait out the request's own timeout, then raise it.

    Args:
        phase: ``"read"`` (default) waits ``extensions["timeout"]["read"]`` (or ``"pool"``)
            and raises :class:`httpx.ReadTimeout`, like a server that accepted the
            connection and went silent; ``"connect"`` waits the connect timeout and raises
            :class:`httpx.ConnectTimeout`, like a blackholed address.
        delivered: forward the request first (the server executes it) and lose the answer;
            only with ``phase="read"``. This is the case that must never make a payment
            run twice.
    """

    phase: Literal["read", "connect"] = "read"
    delivered: bool = False

    def __post_init__(self) -> None:
        if self.phase not in ("read", "connect"):
            raise ValueError(f"phase must be 'read' or 'connect', got {self.phase!r}")
        if self.delivered and self.phase == "connect":
            raise ValueError("delivered=True needs phase='read': a connect hang sends nothing")

    def __repr__(self) -> str:
        args = [] if self.phase == "read" else ["phase='connect'"]
        if self.delivered:
            args.append("delivered=True")
        return f"Hang({', '.join(args)})"


_DEFAULT_MALFORMED = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@dataclass(frozen=True, slots=True)
class Malformed:
    """Answer with a body that does not parse as what it claims to be.

    By default a 200 labelled ``application/json`` whose body is an HTML error page, as a
    load balancer in front of a dead backend sends.
    """

    body: bytes = _DEFAULT_MALFORMED
    status: int = 200
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be in 100..599, got {self.status!r}")

    def __repr__(self) -> str:
        if self.body == _DEFAULT_MALFORMED and self.status == 200:
            return "Malformed()"
        return f"Malformed({_short(self.body)}, status={self.status})"


@dataclass(frozen=True, slots=True)
class Reset:
    """The connection dies before an answer arrives.

    Args:
        graceful: ``False`` (default) raises :class:`httpx.ReadError` with ``ECONNRESET``
            (the peer sent a TCP RST); ``True`` raises :class:`httpx.RemoteProtocolError`
            ("Server disconnected without sending a response"), as for a FIN.
        delivered: forward the request first (the server executes it) and lose the answer.
    """

    graceful: bool = False
    delivered: bool = False

    def __repr__(self) -> str:
        args = [f"{name}=True" for name in ("graceful", "delivered") if getattr(self, name)]
        return f"Reset({', '.join(args)})"


LostHow: TypeAlias = Literal["reset", "hang", "500", "late", "refuse_next"]
"""How :class:`Lost` loses an answer."""

_LOST_HOWS: tuple[LostHow, ...] = ("reset", "hang", "500", "late", "refuse_next")


@dataclass(frozen=True, slots=True)
class Lost:
    """The server executes the request, and its answer never reaches the client.

    The request is forwarded to the inner transport and its answer is read in full and
    closed, so the effect is applied before the client learns anything; then the answer
    is lost as ``how`` says:

    - ``"reset"``: :class:`httpx.ReadError` with ``ECONNRESET``, as when the connection is
      reset after the request was written.
    - ``"hang"``: wait out the request's read timeout (or ``pool``, capped by
      ``max_hang``), then :class:`httpx.ReadTimeout`, as :class:`Hang` does.
    - ``"500"``: an HTTP 500 with a small HTML page instead of the real answer, as a proxy
      whose backend crashed while answering sends.
    - ``"late"``: the real answer after ``seconds``; when the read timeout is shorter,
      :class:`httpx.ReadTimeout` at that timeout instead (the answer arrives after the
      client gave up).
    - ``"refuse_next"``: as ``"reset"``, and the next request on the same transport,
      whatever the schedule says, is refused with :class:`httpx.ConnectError` without
      being forwarded (the host crashed right after executing); ``faults`` records that
      request's fault as an :class:`Error`.

    Args:
        how: one of the above.
        seconds: with ``how="late"`` only (required there): how late the answer is (>= 0).

    Example: ``sequence(Lost("refuse_next"))`` makes a first charge execute and raise
    ``ReadError``, and a retry of it raise ``ConnectError``.
    """

    how: LostHow
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.how not in _LOST_HOWS:
            raise ValueError(f"how must be one of {_LOST_HOWS}, got {self.how!r}")
        if self.how == "late":
            if self.seconds is None or not self.seconds >= 0:
                raise ValueError(f"seconds must be >= 0 with how='late', got {self.seconds!r}")
        elif self.seconds is not None:
            raise ValueError(f"seconds applies to how='late' only, got how={self.how!r}")

    def __repr__(self) -> str:
        if self.seconds is None:
            return f"Lost({self.how!r})"
        return f"Lost({self.how!r}, seconds={self.seconds!r})"


Fault: TypeAlias = Error | Status | Latency | Hang | Malformed | Reset | Lost
"""Any one injectable fault."""

_FAULT_TYPES = (Error, Status, Latency, Hang, Malformed, Reset, Lost)

# What ``Lost("500")`` answers instead of the real answer.
_LOST_500 = Status(
    500,
    headers={"Content-Type": "text/html"},
    body=b"<html><body><h1>500 Internal Server Error</h1></body></html>",
)

# What the request after a ``Lost("refuse_next")`` gets, whatever the schedule says.
_REFUSED = Error(
    httpx.ConnectError,
    f"[Errno {errno.ECONNREFUSED}] Connection refused (injected, after a lost answer)",
)


# ------------------------------------------------------------------------ schedules


class Schedule(Protocol):
    """Decides the fault (or ``None``: pass through) for request number ``index`` (0-based)."""

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None: ...


ScheduleLike: TypeAlias = Schedule | Sequence[Fault | None] | Fault
"""What the transports accept: a schedule, a list of faults (a :func:`sequence`), or one
fault (:func:`always`)."""


class _Combinable:
    __slots__ = ()

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        raise NotImplementedError

    def __or__(self, other: Schedule) -> _FirstOf:
        return _FirstOf((self, other))


@dataclass(frozen=True, slots=True, repr=False)
class _Always(_Combinable):
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault

    def __repr__(self) -> str:
        return f"always({self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _Sequence(_Combinable):
    faults: tuple[Fault | None, ...]

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.faults[index] if index < len(self.faults) else None

    def __repr__(self) -> str:
        return f"sequence({', '.join(map(repr, self.faults))})"


@dataclass(frozen=True, slots=True, repr=False)
class _Every(_Combinable):
    n: int
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault if (index + 1) % self.n == 0 else None

    def __repr__(self) -> str:
        return f"every({self.n}, {self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _After(_Combinable):
    n: int
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault if index >= self.n else None

    def __repr__(self) -> str:
        return f"after({self.n}, {self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _ForPaths(_Combinable):
    prefix: str
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault if request.url.path.startswith(self.prefix) else None

    def __repr__(self) -> str:
        return f"for_paths({self.prefix!r}, {self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _ForHosts(_Combinable):
    hosts: frozenset[str]
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault if request.url.host in self.hosts else None

    def __repr__(self) -> str:
        return f"for_hosts({', '.join(map(repr, sorted(self.hosts)))}, fault={self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _When(_Combinable):
    predicate: Callable[[httpx.Request], bool]
    fault: Fault

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        return self.fault if self.predicate(request) else None

    def __repr__(self) -> str:
        name = getattr(self.predicate, "__qualname__", repr(self.predicate))
        return f"when({name}, {self.fault!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _FirstOf(_Combinable):
    schedules: tuple[Schedule, ...]

    def __call__(self, index: int, request: httpx.Request, /) -> Fault | None:
        for schedule in self.schedules:
            fault = schedule(index, request)
            if fault is not None:
                return fault
        return None

    def __or__(self, other: Schedule) -> _FirstOf:
        return _FirstOf((*self.schedules, other))

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.schedules))


def always(fault: Fault) -> _Always:
    """Inject ``fault`` into every request."""
    _check_fault(fault)
    return _Always(fault)


def sequence(*faults: Fault | None) -> _Sequence:
    """Inject ``faults[i]`` into request ``i`` (``None`` passes it through), then pass
    everything through.

    ``sequence(Status(503), Status(503))`` fails the first two requests and lets the rest
    reach the inner transport.
    """
    for fault in faults:
        if fault is not None:
            _check_fault(fault)
    return _Sequence(tuple(faults))


def every(n: int, fault: Fault) -> _Every:
    """Inject ``fault`` into every ``n``-th request (the ``n``-th, ``2n``-th, ...)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    _check_fault(fault)
    return _Every(n, fault)


def after(n: int, fault: Fault) -> _After:
    """Let the first ``n`` requests through, then inject ``fault`` into every later one."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    _check_fault(fault)
    return _After(n, fault)


def for_paths(prefix: str, fault: Fault) -> _ForPaths:
    """Inject ``fault`` into every request whose URL path starts with ``prefix``."""
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', got {prefix!r}")
    _check_fault(fault)
    return _ForPaths(prefix, fault)


def for_hosts(*hosts: str, fault: Fault) -> _ForHosts:
    """Inject ``fault`` into every request to one of ``hosts`` (exact host names)."""
    if not hosts:
        raise ValueError("hosts must name at least one host")
    _check_fault(fault)
    return _ForHosts(frozenset(h.lower() for h in hosts), fault)


def when(predicate: Callable[[httpx.Request], bool], fault: Fault) -> _When:
    """Inject ``fault`` into every request for which ``predicate(request)`` is true."""
    _check_fault(fault)
    return _When(predicate, fault)


def _as_schedule(schedule: ScheduleLike) -> Schedule:
    if isinstance(schedule, _FAULT_TYPES):
        return always(schedule)
    if isinstance(schedule, Sequence):
        return sequence(*schedule)
    if callable(schedule):
        return schedule
    raise TypeError(f"schedule must be a Schedule, a list of faults or a fault: {schedule!r}")


def _check_fault(fault: object) -> None:
    if not isinstance(fault, _FAULT_TYPES):
        raise TypeError(f"not a fault: {fault!r}")


# ----------------------------------------------------------------------- transports


def _default_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


class _Recorder:
    """The bookkeeping both transports share: request index, what was injected, counts."""

    def __init__(self, schedule: ScheduleLike, max_hang: float) -> None:
        if not max_hang > 0:
            raise ValueError(f"max_hang must be > 0 seconds, got {max_hang!r}")
        self.schedule = _as_schedule(schedule)
        self.max_hang = float(max_hang)
        self.lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.faults: list[Fault | None] = []
        self.forwarded: list[httpx.Request] = []
        self.counts: Counter[Fault] = Counter()
        self.refusing = False

    def decide(self, request: httpx.Request) -> Fault | None:
        with self.lock:
            index = len(self.requests)
            self.requests.append(request)
            if self.refusing:
                self.refusing = False
                self.faults.append(_REFUSED)
                self.counts[_REFUSED] += 1
                return _REFUSED
            # Reserve the slot before asking the schedule, so concurrent requests get
            # distinct indexes even when a user schedule is slow.
            self.faults.append(None)
        fault = self.schedule(index, request)
        if fault is not None:
            _check_fault(fault)
        with self.lock:
            self.faults[index] = fault
            if fault is not None:
                self.counts[fault] += 1
        return fault

    def note_forwarded(self, request: httpx.Request) -> None:
        with self.lock:
            self.forwarded.append(request)

    def refuse_next(self) -> None:
        with self.lock:
            self.refusing = True

    def timeout(self, request: httpx.Request, phase: Literal["read", "connect"]) -> float | None:
        timeouts = request.extensions.get("timeout", {})
        value = timeouts.get(phase)
        if value is None and phase == "read":
            value = timeouts.get("pool")
        return None if value is None else float(value)

    def hang_seconds(self, request: httpx.Request, phase: Literal["read", "connect"]) -> float:
        limit = self.timeout(request, phase)
        return self.max_hang if limit is None else min(limit, self.max_hang)

    def repr(self, name: str) -> str:
        with self.lock:
            seen, injected = len(self.requests), sum(self.counts.values())
        return f"{name}({self.schedule!r}, requests={seen}, injected={injected})"


def _timeout_error(
    request: httpx.Request, phase: Literal["read", "connect"], seconds: float, closed: bool
) -> httpx.TimeoutException:
    why = "transport closed" if closed else f"no answer within {seconds:g} s"
    if phase == "connect":
        return httpx.ConnectTimeout(f"injected hang: {why}", request=request)
    return httpx.ReadTimeout(f"injected hang: {why}", request=request)


def _static_error(fault: Error | Reset, request: httpx.Request) -> httpx.RequestError:
    if isinstance(fault, Error):
        return fault.exc_type(fault.message, request=request)
    if fault.graceful:
        return httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )
    return httpx.ReadError(
        f"[Errno {errno.ECONNRESET}] Connection reset by peer (injected)", request=request
    )


def _static_response(fault: Status | Malformed, request: httpx.Request) -> httpx.Response:
    if isinstance(fault, Status):
        return httpx.Response(
            fault.code, headers=fault.header_items(), content=fault.body, request=request
        )
    return httpx.Response(
        fault.status,
        headers={"Content-Type": fault.content_type},
        content=fault.body,
        request=request,
    )


@dataclass(frozen=True, slots=True)
class _Forward:
    """Send the request to the inner transport (answered: its response).

    With ``drain`` the answer is read in full and closed first, so the server is done with
    the request, and handed back with its body in memory; a response built in memory
    (``MockTransport``) is already both.
    """

    drain: bool


@dataclass(frozen=True, slots=True)
class _Wait:
    """Wait ``seconds`` (answered: True when ``close()`` cut the wait short)."""

    seconds: float


_Step: TypeAlias = _Forward | _Wait
_Answer: TypeAlias = httpx.Response | bool | None
_Play: TypeAlias = Generator[_Step, _Answer, httpx.Response]


def _forward(*, drain: bool) -> Generator[_Step, _Answer, httpx.Response]:
    response = yield _Forward(drain)
    assert isinstance(response, httpx.Response)
    return response


def _wait(seconds: float) -> Generator[_Step, _Answer, bool]:
    closed = yield _Wait(seconds)
    assert isinstance(closed, bool)
    return closed


def _play(fault: Fault | None, request: httpx.Request, record: _Recorder) -> _Play:
    """What ``fault`` does to ``request``, for both transports (one sans-IO home for every
    fault's behaviour): yields the steps to take, then returns the response or raises the
    error the client sees."""
    match fault:
        case None:
            return (yield from _forward(drain=False))
        case Latency(seconds=seconds):
            yield from _delay(seconds, request, record)
            return (yield from _forward(drain=False))
        case Hang(phase=phase, delivered=delivered):
            if delivered:
                yield from _forward(drain=True)
            seconds = record.hang_seconds(request, phase)
            closed = yield from _wait(seconds)
            raise _timeout_error(request, phase, seconds, closed)
        case Reset(delivered=True):
            yield from _forward(drain=True)
            raise _static_error(fault, request)
        case Error() | Reset():
            raise _static_error(fault, request)
        case Status() | Malformed():
            return _static_response(fault, request)
        case Lost():
            return (yield from _play_lost(fault, request, record))
        case _:
            assert_never(fault)


def _play_lost(fault: Lost, request: httpx.Request, record: _Recorder) -> _Play:
    answer = yield from _forward(drain=True)
    match fault.how:
        case "reset" | "refuse_next":
            if fault.how == "refuse_next":
                record.refuse_next()
            raise _static_error(Reset(), request)
        case "hang":
            return (yield from _play(Hang(), request, record))
        case "500":
            return _static_response(_LOST_500, request)
        case "late":
            assert fault.seconds is not None
            yield from _delay(fault.seconds, request, record)
            return answer
        case _:
            assert_never(fault.how)


def _delay(
    seconds: float, request: httpx.Request, record: _Recorder
) -> Generator[_Step, _Answer, None]:
    """Wait ``seconds``, or raise ``ReadTimeout`` at the read timeout when that is sooner."""
    limit = record.timeout(request, "read")
    if limit is not None and seconds > limit:
        yield from _wait(limit)
        raise _timeout_error(request, "read", limit, closed=False)
    yield from _wait(seconds)


def _buffered(response: httpx.Response, raw: bytes, request: httpx.Request) -> httpx.Response:
    """``response`` again, its body (still encoded as sent) held in memory."""
    extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        extensions=extensions,
        request=request,
    )


_Inner = TypeVar("_Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _RecordView(Generic[_Inner]):
    """What the sync and async fault transports share: the schedule, the inner transport,
    the clock, and what they report about the requests they saw."""

    def __init__(
        self, schedule: ScheduleLike, inner: _Inner | None, clock: FakeClock | None, max_hang: float
    ) -> None:
        self._record = _Recorder(schedule, max_hang)
        # MockTransport is both a sync and an async transport.
        self._inner: _Inner = inner if inner is not None else httpx.MockTransport(_default_handler)
        self._clock = clock

    @property
    def schedule(self) -> Schedule:
        """The schedule in use."""
        return self._record.schedule

    @property
    def requests(self) -> tuple[httpx.Request, ...]:
        """Every request seen, in order."""
        with self._record.lock:
            return tuple(self._record.requests)

    @property
    def faults(self) -> tuple[Fault | None, ...]:
        """The fault given to each request in ``requests`` (``None``: passed through)."""
        with self._record.lock:
            return tuple(self._record.faults)

    @property
    def forwarded(self) -> tuple[httpx.Request, ...]:
        """The requests that reached the inner transport."""
        with self._record.lock:
            return tuple(self._record.forwarded)

    @property
    def counts(self) -> Counter[Fault]:
        """How many times each fault was injected."""
        with self._record.lock:
            return Counter(self._record.counts)

    def count(self, kind: type[Fault] | Fault) -> int:
        """How many times a fault (``Status(503)``) or a kind of fault (``Status``) was
        injected."""
        with self._record.lock:
            if isinstance(kind, type):
                return sum(n for f, n in self._record.counts.items() if isinstance(f, kind))
            return self._record.counts[kind]


class FaultTransport(_RecordView[httpx.BaseTransport], httpx.BaseTransport):
    """An :class:`httpx.BaseTransport` that injects faults into chosen requests.

    Args:
        schedule: which fault each request gets (see the module docs); default: none.
        inner: where requests that get no fault (or a ``Latency``, ``Lost`` or
            ``delivered`` fault) go. Default: a :class:`httpx.MockTransport` answering
            200 ``{}``; any sync transport works (``MockTransport``, ``HTTPTransport``,
            ``WSGITransport``).
        clock: a :class:`FakeClock` for virtual time; without one, waits are real.
        max_hang: the longest a :class:`Hang` waits, in seconds (> 0), for requests
            without a timeout and as a cap on long ones.

    Attributes ``requests``, ``faults`` (aligned with ``requests``; ``None`` = passed
    through), ``forwarded`` and ``counts`` record what happened.
    """

    def __init__(
        self,
        schedule: ScheduleLike = (),
        *,
        inner: httpx.BaseTransport | None = None,
        clock: FakeClock | None = None,
        max_hang: float = 30.0,
    ) -> None:
        super().__init__(schedule, inner, clock, max_hang)
        self._closed = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Apply this request's fault, or forward it to the inner transport."""
        play = _play(self._record.decide(request), request, self._record)
        answer: _Answer = None
        try:
            while True:
                match play.send(answer):
                    case _Forward(drain=drain):
                        answer = self._forward(request, drain=drain)
                    case _Wait(seconds=seconds):
                        answer = self._wait(seconds)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response
        finally:
            play.close()

    def _forward(self, request: httpx.Request, *, drain: bool) -> httpx.Response:
        self._record.note_forwarded(request)
        response = self._inner.handle_request(request)
        if not drain or response.is_stream_consumed:
            return response
        try:
            raw = b"".join(response.iter_raw())
        finally:
            response.close()
        return _buffered(response, raw, request)

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` (virtually with a clock); True when cut short by ``close()``."""
        if self._clock is not None:
            self._clock.sleep(seconds)
            return False
        # An Event rather than time.sleep, so close() can cut a wait short.
        return self._closed.wait(seconds)

    def close(self) -> None:
        """Release any hanging request at once and close the inner transport."""
        self._closed.set()
        self._inner.close()

    def __repr__(self) -> str:
        return self._record.repr("FaultTransport")


class AsyncFaultTransport(_RecordView[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`FaultTransport`, for :class:`httpx.AsyncClient`.

    Same arguments, except ``inner`` is an async transport (``MockTransport``,
    ``ASGITransport``, ``AsyncHTTPTransport``); real waits use :func:`asyncio.sleep`, and
    virtual ones ``clock.asleep``. ``aclose()`` releases any hanging request.
    """

    def __init__(
        self,
        schedule: ScheduleLike = (),
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        clock: FakeClock | None = None,
        max_hang: float = 30.0,
    ) -> None:
        super().__init__(schedule, inner, clock, max_hang)
        self._closed = False
        self._closed_event: asyncio.Event | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Apply this request's fault, or forward it to the inner transport."""
        play = _play(self._record.decide(request), request, self._record)
        answer: _Answer = None
        try:
            while True:
                match play.send(answer):
                    case _Forward(drain=drain):
                        answer = await self._forward(request, drain=drain)
                    case _Wait(seconds=seconds):
                        answer = await self._wait(seconds)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response
        finally:
            play.close()

    async def _forward(self, request: httpx.Request, *, drain: bool) -> httpx.Response:
        self._record.note_forwarded(request)
        response = await self._inner.handle_async_request(request)
        if not drain or response.is_stream_consumed:
            return response
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return _buffered(response, raw, request)

    async def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` (virtually with a clock); True when cut short by ``aclose()``."""
        if self._clock is not None:
            await self._clock.asleep(seconds)
            return False
        if self._closed:
            return True
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
        try:
            await asyncio.wait_for(self._closed_event.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Release any hanging request at once and close the inner transport."""
        self._closed = True
        if self._closed_event is not None:
            self._closed_event.set()
        await self._inner.aclose()

    def __repr__(self) -> str:
        return self._record.repr("AsyncFaultTransport")


def _qualname(cls: type) -> str:
    module = cls.__module__
    if module.startswith("httpx"):
        module = "httpx"
    return f"{module}.{cls.__qualname__}" if module != "builtins" else cls.__qualname__


def _short(body: bytes, limit: int = 24) -> str:
    return repr(body if len(body) <= limit else body[:limit] + b"...")
