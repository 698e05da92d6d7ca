"""FaultTransport / AsyncFaultTransport: schedules, fault kinds, records, virtual time."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from superapp_sdk.testing._clock import FakeClock
from superapp_sdk.testing._faults import (
    AsyncFaultTransport,
    Error,
    Fault,
    FaultTransport,
    Hang,
    Latency,
    Malformed,
    Reset,
    Status,
    after,
    always,
    every,
    for_hosts,
    for_paths,
    sequence,
    when,
)
from superapp_sdk.testing._servers import echo_app

URL = "https://kapi.kakao.com/v1/user/me"


def _client(transport: httpx.BaseTransport, **kwargs: object) -> httpx.Client:
    return httpx.Client(transport=transport, **kwargs)  # type: ignore[arg-type]


def _outcomes(transport: FaultTransport, urls: list[str]) -> list[int | str]:
    """Status code per request, or the exception class name when one was raised."""
    results: list[int | str] = []
    with _client(transport) as client:
        for url in urls:
            try:
                results.append(client.get(url).status_code)
            except httpx.RequestError as exc:
                results.append(type(exc).__name__)
    return results


# ------------------------------------------------------------------ pass-through


def test_default_inner_answers_200_empty_json() -> None:
    """With no schedule every request reaches the default inner transport: 200 {}."""
    transport = FaultTransport()
    with _client(transport) as client:
        response = client.get(URL)
    assert (response.status_code, response.json()) == (200, {})
    assert transport.faults == (None,)
    assert [str(r.url) for r in transport.forwarded] == [URL]


def test_given_inner_transport_receives_unfaulted_requests() -> None:
    """Requests without a fault go to the inner transport given."""
    inner = httpx.MockTransport(lambda request: httpx.Response(201, text=request.url.path))
    transport = FaultTransport(sequence(Status(500)), inner=inner)
    with _client(transport) as client:
        first, second = client.get(URL), client.get(URL)
    assert (first.status_code, second.status_code, second.text) == (500, 201, "/v1/user/me")
    assert len(transport.forwarded) == 1


# --------------------------------------------------------------------- schedules


def test_sequence_applies_faults_in_order_then_passes_through() -> None:
    """sequence(a, None, b) faults requests 0 and 2 and passes 1 and 3 on."""
    transport = FaultTransport(sequence(Status(503), None, Error()))
    assert _outcomes(transport, [URL] * 4) == [503, 200, "ConnectError", 200]


def test_list_schedule_is_a_sequence() -> None:
    """A plain list of faults behaves like sequence()."""
    transport = FaultTransport([Status(502), Status(504)])
    assert _outcomes(transport, [URL] * 3) == [502, 504, 200]


def test_single_fault_schedule_is_always() -> None:
    """A single fault as the schedule is injected into every request."""
    transport = FaultTransport(Status(500))
    assert _outcomes(transport, [URL] * 3) == [500, 500, 500]


def test_always_injects_every_time() -> None:
    """always(f) injects f into every request."""
    transport = FaultTransport(always(Error(httpx.ConnectTimeout)))
    assert _outcomes(transport, [URL] * 2) == ["ConnectTimeout"] * 2


def test_every_n_faults_each_nth_request() -> None:
    """every(3, f) faults the 3rd and 6th requests (1-based) only."""
    transport = FaultTransport(every(3, Status(503)))
    assert _outcomes(transport, [URL] * 6) == [200, 200, 503, 200, 200, 503]


def test_after_n_lets_n_through_then_faults_all() -> None:
    """after(2, f) passes two requests, then faults every later one."""
    transport = FaultTransport(after(2, Error()))
    assert _outcomes(transport, [URL] * 4) == [200, 200, "ConnectError", "ConnectError"]


def test_for_paths_matches_url_path_prefix_only() -> None:
    """for_paths(prefix, f) faults requests whose path starts with prefix."""
    transport = FaultTransport(for_paths("/v1/payment", Status(503)))
    urls = ["https://kapi.kakao.com/v1/payment/ready", URL, "https://x.test/v1/payment"]
    assert _outcomes(transport, urls) == [503, 200, 503]


def test_for_hosts_matches_exact_host() -> None:
    """for_hosts(h, fault=f) faults requests to host h and not its neighbours."""
    transport = FaultTransport(for_hosts("kapi.kakao.com", fault=Status(503)))
    urls = [URL, "https://kauth.kakao.com/oauth/token", "https://KAPI.kakao.com/x"]
    assert _outcomes(transport, urls) == [503, 200, 503]


def test_when_uses_the_predicate() -> None:
    """when(predicate, f) faults the requests the predicate accepts."""
    transport = FaultTransport(when(lambda r: r.method == "POST", Reset()))
    with _client(transport) as client:
        assert client.get(URL).status_code == 200
        with pytest.raises(httpx.ReadError):
            client.post(URL)


def test_or_combination_first_naming_a_fault_wins() -> None:
    """a | b consults a first and falls back to b."""
    transport = FaultTransport(for_paths("/pay", Status(402)) | every(2, Status(503)))
    urls = ["https://h.test/pay", "https://h.test/a", "https://h.test/pay", "https://h.test/b"]
    assert _outcomes(transport, urls) == [402, 503, 402, 503]


def test_callable_schedule_gets_index_and_request() -> None:
    """A plain function schedule is called with the 0-based index and the request."""
    seen: list[tuple[int, str]] = []

    def schedule(index: int, request: httpx.Request) -> Fault | None:
        seen.append((index, request.url.path))
        return Status(500) if index == 1 else None

    transport = FaultTransport(schedule)
    assert _outcomes(transport, ["https://h.test/a", "https://h.test/b"]) == [200, 500]
    assert seen == [(0, "/a"), (1, "/b")]


def test_schedule_returning_a_non_fault_is_a_type_error() -> None:
    """A schedule that returns something other than a fault or None is rejected."""
    transport = FaultTransport(lambda index, request: 503)  # type: ignore[arg-type]
    with _client(transport) as client, pytest.raises(TypeError, match="not a fault"):
        client.get(URL)


# ----------------------------------------------------------------------- faults


def test_status_with_retry_after_and_body() -> None:
    """Status(503, retry_after=2) answers 503 with Retry-After: 2 and the given body."""
    transport = FaultTransport(
        Status(503, headers={"X-Request-Id": "r1"}, body=b"down", retry_after=2)
    )
    with _client(transport) as client:
        response = client.get(URL)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-Request-Id"] == "r1"
    assert response.content == b"down"
    assert transport.forwarded == ()


def test_error_raises_given_exception_type_with_request() -> None:
    """Error(exc_type) raises that httpx error, bound to the request."""
    transport = FaultTransport(Error(httpx.ConnectTimeout, "boom"))
    with _client(transport) as client, pytest.raises(httpx.ConnectTimeout, match="boom") as info:
        client.get(URL)
    assert str(info.value.request.url) == URL


def test_malformed_claims_json_but_sends_html() -> None:
    """Malformed() answers 200 application/json with an HTML body that fails to parse."""
    transport = FaultTransport(Malformed())
    with _client(transport) as client:
        response = client.get(URL)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content.startswith(b"<html>")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_reset_raises_read_error_like_a_rst() -> None:
    """Reset() raises httpx.ReadError mentioning a reset connection."""
    transport = FaultTransport(Reset())
    with _client(transport) as client, pytest.raises(httpx.ReadError, match="reset"):
        client.get(URL)
    assert transport.forwarded == ()


def test_graceful_reset_raises_remote_protocol_error() -> None:
    """Reset(graceful=True) raises RemoteProtocolError, as when the server closes early."""
    transport = FaultTransport(Reset(graceful=True))
    with _client(transport) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(URL)


def test_delivered_reset_reaches_server_and_loses_the_answer() -> None:
    """Reset(delivered=True) forwards the request, then raises: the server did execute."""
    executed: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        executed.append(request.url.path)
        return httpx.Response(200, json={"paid": True})

    transport = FaultTransport(Reset(delivered=True), inner=httpx.MockTransport(handler))
    with _client(transport) as client, pytest.raises(httpx.ReadError):
        client.post("https://pay.test/v1/payment/approve")
    assert executed == ["/v1/payment/approve"]
    assert len(transport.forwarded) == 1


# ----------------------------------------------------------------- virtual time


def test_latency_advances_fake_clock_then_forwards() -> None:
    """Latency(s) with a FakeClock advances the clock by s and then answers."""
    clock = FakeClock()
    transport = FaultTransport(Latency(1.5), clock=clock)
    with _client(transport, timeout=5.0) as client:
        assert client.get(URL).status_code == 200
    assert clock.monotonic() == 1.5
    assert len(transport.forwarded) == 1


def test_latency_beyond_read_timeout_becomes_read_timeout() -> None:
    """Latency longer than the read timeout raises ReadTimeout at the timeout, unsent."""
    clock = FakeClock()
    transport = FaultTransport(Latency(10.0), clock=clock)
    timeout = httpx.Timeout(5.0, read=2.0)
    with _client(transport, timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(URL)
    assert clock.monotonic() == 2.0
    assert transport.forwarded == ()


def test_hang_waits_out_the_read_timeout_on_the_fake_clock() -> None:
    """Hang() advances the FakeClock by the request's read timeout and raises ReadTimeout."""
    clock = FakeClock()
    transport = FaultTransport(Hang(), clock=clock)
    timeout = httpx.Timeout(1.0, read=3.0)
    with _client(transport, timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(URL)
    assert clock.slept == [3.0]
    assert transport.forwarded == ()


def test_hang_falls_back_to_pool_timeout_without_read_timeout() -> None:
    """With read=None the hang lasts the pool timeout."""
    clock = FakeClock()
    transport = FaultTransport(Hang(), clock=clock)
    timeout = httpx.Timeout(1.0, read=None, pool=4.0)
    with _client(transport, timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.get(URL)
    assert clock.slept == [4.0]


def test_hang_without_any_timeout_is_capped_by_max_hang() -> None:
    """With no timeout at all a hang lasts max_hang seconds."""
    clock = FakeClock()
    transport = FaultTransport(Hang(), clock=clock, max_hang=7.0)
    with _client(transport, timeout=None) as client, pytest.raises(httpx.ReadTimeout):
        client.get(URL)
    assert clock.slept == [7.0]


def test_long_timeout_is_capped_by_max_hang() -> None:
    """A read timeout longer than max_hang waits only max_hang."""
    clock = FakeClock()
    transport = FaultTransport(Hang(), clock=clock, max_hang=2.0)
    with _client(transport, timeout=60.0) as client, pytest.raises(httpx.ReadTimeout):
        client.get(URL)
    assert clock.slept == [2.0]


def test_connect_hang_raises_connect_timeout_after_connect_timeout() -> None:
    """Hang(phase='connect') waits the connect timeout and raises ConnectTimeout."""
    clock = FakeClock()
    transport = FaultTransport(Hang(phase="connect"), clock=clock)
    timeout = httpx.Timeout(9.0, connect=0.5)
    with _client(transport, timeout=timeout) as client, pytest.raises(httpx.ConnectTimeout):
        client.get(URL)
    assert clock.slept == [0.5]


def test_delivered_hang_forwards_then_times_out() -> None:
    """Hang(delivered=True) lets the server execute, then the answer never arrives."""
    clock = FakeClock()
    transport = FaultTransport(Hang(delivered=True), clock=clock)
    with _client(transport, timeout=1.0) as client, pytest.raises(httpx.ReadTimeout):
        client.post(URL)
    assert len(transport.forwarded) == 1
    assert clock.monotonic() == 1.0


def test_close_releases_a_real_time_hang() -> None:
    """Without a clock a hang waits for real, and close() from another thread ends it."""
    reached = threading.Event()

    def schedule(index: int, request: httpx.Request) -> Fault | None:
        reached.set()
        return Hang()

    transport = FaultTransport(schedule, max_hang=30.0)
    client = _client(transport, timeout=None)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.get(URL)
        except httpx.ReadTimeout as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    assert reached.wait(5.0)
    transport.close()
    worker.join(5.0)
    client.close()
    assert not worker.is_alive()
    assert len(errors) == 1
    assert "closed" in str(errors[0])


# ---------------------------------------------------------------------- records


def test_records_requests_faults_and_counts() -> None:
    """requests, faults, counts and count() reflect what was injected."""
    transport = FaultTransport(sequence(Status(503), Status(503), Status(502), None, Error()))
    _outcomes(transport, [URL] * 5)
    assert len(transport.requests) == 5
    assert transport.faults == (Status(503), Status(503), Status(502), None, Error())
    assert transport.counts == {Status(503): 2, Status(502): 1, Error(): 1}
    assert transport.count(Status) == 3
    assert transport.count(Status(503)) == 2
    assert transport.count(Hang) == 0


# ----------------------------------------------------------------------- reprs


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Error(), "Error(httpx.ConnectError)"),
        (Status(503, retry_after=1), "Status(503, retry_after=1)"),
        (Status(502, {"X-A": "b"}, b"x"), "Status(502, headers={'X-A': 'b'}, body=b'x')"),
        (Status(500), "Status(500)"),
        (Latency(0.5), "Latency(0.5)"),
        (Hang(), "Hang()"),
        (Hang(phase="connect"), "Hang(phase='connect')"),
        (Malformed(), "Malformed()"),
        (Reset(delivered=True), "Reset(delivered=True)"),
        (sequence(Status(503), None), "sequence(Status(503), None)"),
        (every(2, Hang()) | after(3, Reset()), "every(2, Hang()) | after(3, Reset())"),
        (for_paths("/v1", Error()), "for_paths('/v1', Error(httpx.ConnectError))"),
    ],
)
def test_reprs_are_readable(value: object, text: str) -> None:
    """Faults and schedules print as the code that builds them."""
    assert repr(value) == text


def test_transport_repr_shows_schedule_and_progress() -> None:
    """The transport's repr names its schedule and how many requests it saw and faulted."""
    transport = FaultTransport(sequence(Status(503)))
    _outcomes(transport, [URL] * 2)
    assert repr(transport) == "FaultTransport(sequence(Status(503)), requests=2, injected=1)"


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Status(600), "code"),
        (lambda: Status(503, retry_after=-1), "retry_after"),
        (lambda: Latency(-0.1), "seconds"),
        (lambda: Hang(phase="connect", delivered=True), "delivered"),
        (lambda: Hang(phase="write"), "phase"),  # type: ignore[arg-type]
        (lambda: Malformed(status=99), "status"),
        (lambda: Error(ValueError), "exc_type"),  # type: ignore[arg-type]
        (lambda: every(0, Error()), "n"),
        (lambda: after(-1, Error()), "n"),
        (lambda: for_paths("v1", Error()), "prefix"),
        (lambda: for_hosts(fault=Error()), "hosts"),
        (lambda: FaultTransport(max_hang=0), "max_hang"),
    ],
)
def test_invalid_options_name_the_field(build: object, field: str) -> None:
    """Invalid options raise ValueError naming the field."""
    assert callable(build)
    with pytest.raises(ValueError, match=field):
        build()


def test_schedule_helpers_reject_non_faults() -> None:
    """Helpers refuse values that are not faults."""
    with pytest.raises(TypeError, match="not a fault"):
        always(503)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ async


async def test_async_sequence_with_asgi_inner() -> None:
    """AsyncFaultTransport faults, then forwards to an ASGI app."""
    transport = AsyncFaultTransport(
        sequence(Status(503), Error()), inner=httpx.ASGITransport(app=echo_app)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        assert (await client.get("/a")).status_code == 503
        with pytest.raises(httpx.ConnectError):
            await client.get("/b")
        response = await client.get("/c")
    assert response.json() == {"ok": True, "method": "GET", "path": "/c"}
    assert transport.count(Status) == 1


async def test_async_hang_and_latency_use_the_fake_clock() -> None:
    """Async latency and hang advance the FakeClock through asleep."""
    clock = FakeClock()
    transport = AsyncFaultTransport(sequence(Latency(0.25), Hang()), clock=clock)
    async with httpx.AsyncClient(transport=transport, timeout=2.0) as client:
        assert (await client.get(URL)).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.get(URL)
    assert clock.slept == [0.25, 2.0]


async def test_async_delivered_reset_forwards() -> None:
    """Async Reset(delivered=True) reaches the inner transport and then raises."""
    transport = AsyncFaultTransport(Reset(delivered=True))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ReadError):
            await client.post(URL)
    assert len(transport.forwarded) == 1


async def test_aclose_releases_a_real_time_hang() -> None:
    """Without a clock an async hang waits for real, and aclose() ends it at once."""
    reached = asyncio.Event()

    def schedule(index: int, request: httpx.Request) -> Fault | None:
        reached.set()
        return Hang()

    transport = AsyncFaultTransport(schedule, max_hang=30.0)
    # No timeout at all: only max_hang or aclose() can end this hang.
    async with httpx.AsyncClient(transport=transport, timeout=None) as client:  # noqa: S113
        task = asyncio.create_task(client.get(URL))
        await asyncio.wait_for(reached.wait(), 5.0)
        await asyncio.sleep(0)  # let the request start waiting
        await transport.aclose()
        with pytest.raises(httpx.ReadTimeout, match="closed"):
            await asyncio.wait_for(task, 5.0)


def test_async_repr() -> None:
    """The async transport's repr names its schedule."""
    transport = AsyncFaultTransport(always(Hang()))
    assert repr(transport) == "AsyncFaultTransport(always(Hang()), requests=0, injected=0)"
