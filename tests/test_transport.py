"""ResilientTransport and AsyncResilientTransport over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from superapp_sdk._errors import CircuitOpen, OperationTimeout
from superapp_sdk.core.breaker import BreakerOptions, BreakerState
from superapp_sdk.resilience import (
    AsyncResilientTransport,
    CircuitBreaker,
    Pipeline,
    ResilientTransport,
    Retry,
    Timeout,
)
from superapp_sdk.testing import FakeClock

URL = "https://kapi.example/v1/thing"


class Script:
    """A MockTransport handler that plays a list of responses or errors in order (the last
    one repeats) and remembers every request it saw."""

    def __init__(self, *steps: int | type[httpx.TransportError]) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def _next(self) -> int | type[httpx.TransportError]:
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self._next()
        if isinstance(step, int):
            return httpx.Response(step, text=f"status {step}")
        raise step("scripted", request=request)

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        return self(request)


def _pipeline(clock: FakeClock, *, attempts: int = 3, **breaker: Any) -> Pipeline:
    options = BreakerOptions(**breaker) if breaker else BreakerOptions()
    return Pipeline(
        CircuitBreaker(options),
        Retry(attempts),
        Timeout(1.0),
        name="kakao",
        timer=clock,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _client(script: Script, pipeline: Pipeline) -> httpx.Client:
    return httpx.Client(
        transport=ResilientTransport(httpx.MockTransport(script), pipeline=pipeline)
    )


def _aclient(script: Script, pipeline: Pipeline) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(httpx.MockTransport(script.handle_async), pipeline=pipeline)
    return httpx.AsyncClient(transport=transport)


# -- status codes ----------------------------------------------------------------------


def test_503_then_200_is_retried_once(clock: FakeClock) -> None:
    """A 503 is retried; the 200 that follows is returned."""
    script = Script(503, 200)
    with _client(script, _pipeline(clock)) as client:
        response = client.get(URL)
    assert response.status_code == 200
    assert response.text == "status 200"
    assert len(script.requests) == 2
    assert len(clock.slept) == 1


def test_503_forever_returns_the_last_503(clock: FakeClock) -> None:
    """After every try got a 503, the last 503 is returned as httpx would have."""
    script = Script(503)
    with _client(script, _pipeline(clock)) as client:
        response = client.get(URL)
    assert response.status_code == 503
    assert response.text == "status 503"
    assert len(script.requests) == 3


def test_retry_after_header_sets_the_wait(clock: FakeClock) -> None:
    """A 429 with ``Retry-After: 3`` waits at least three seconds before the retry."""
    answers = iter(
        [httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, text="ok")]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    with httpx.Client(transport=ResilientTransport(transport, pipeline=_pipeline(clock))) as c:
        assert c.get(URL).status_code == 200
    assert clock.slept[0] >= 3


def test_success_status_is_not_retried(clock: FakeClock) -> None:
    """A 404 is an answer, not a failure: one request, returned as is."""
    script = Script(404)
    with _client(script, _pipeline(clock)) as client:
        assert client.get(URL).status_code == 404
    assert len(script.requests) == 1


def test_post_without_key_is_not_retried_after_503(clock: FakeClock) -> None:
    """A 503 to a POST without an idempotency key may have executed: no retry."""
    script = Script(503, 200)
    with _client(script, _pipeline(clock)) as client:
        assert client.post(URL, json={"a": 1}).status_code == 503
    assert len(script.requests) == 1


# -- transport errors and idempotency --------------------------------------------------


def test_post_without_key_is_not_retried_after_a_read_error(clock: FakeClock) -> None:
    """A POST that may have reached the server is not sent twice."""
    script = Script(httpx.ReadError, 200)
    with _client(script, _pipeline(clock)) as client, pytest.raises(httpx.ReadError):
        client.post(URL, json={"amount": 1000})
    assert len(script.requests) == 1


def test_post_without_key_is_retried_after_a_connect_error(clock: FakeClock) -> None:
    """A refused connection proves the POST never left: it is retried."""
    script = Script(httpx.ConnectError, 200)
    with _client(script, _pipeline(clock)) as client:
        assert client.post(URL, json={"amount": 1000}).status_code == 200
    assert len(script.requests) == 2


def test_post_with_key_is_retried_and_reuses_the_key(clock: FakeClock) -> None:
    """A POST carrying an Idempotency-Key is retried after a read error with the same key
    and the same body."""
    script = Script(httpx.ReadError, 503, 200)
    headers = {"Idempotency-Key": "order-42"}
    with _client(script, _pipeline(clock)) as client:
        response = client.post(URL, json={"amount": 1000}, headers=headers)
    assert response.status_code == 200
    assert [r.headers["idempotency-key"] for r in script.requests] == ["order-42"] * 3
    assert len({r.content for r in script.requests}) == 1


def test_get_is_retried_after_a_read_error(clock: FakeClock) -> None:
    """An idempotent GET is retried after any transport error."""
    script = Script(httpx.ReadError, 200)
    with _client(script, _pipeline(clock)) as client:
        assert client.get(URL).status_code == 200
    assert len(script.requests) == 2


def test_transport_error_after_every_try_is_raised(clock: FakeClock) -> None:
    """When every try fails at the transport, httpx's own error is raised."""
    script = Script(httpx.ConnectError)
    with _client(script, _pipeline(clock)) as client, pytest.raises(httpx.ConnectError):
        client.get(URL)
    assert len(script.requests) == 3


def test_streaming_body_is_buffered_for_a_retry(clock: FakeClock) -> None:
    """A retryable request with a streamed body sends the whole body on every try."""
    script = Script(503, 200)

    def body() -> Iterator[bytes]:
        yield b"part1-"
        yield b"part2"

    with _client(script, _pipeline(clock)) as client:
        assert client.put(URL, content=body()).status_code == 200
    assert [r.content for r in script.requests] == [b"part1-part2"] * 2


# -- the response handed back -----------------------------------------------------------


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A gzip-encoded body in two chunks that remembers whether it was closed."""

    def __init__(self) -> None:
        data = gzip.compress(b"hello, " * 100)
        self.chunks = [data[:10], data[10:]]
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def _gzip_handler(bodies: list[_Body]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(_Body())
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=bodies[-1])

    return handler


def test_response_is_decoded_once_closed_and_timed_like_httpxs(clock: FakeClock) -> None:
    """The body is read inside the try, yet the client still decodes it (once), closes
    the response and sets ``elapsed``; the provider's stream is closed by the try."""
    bodies: list[_Body] = []
    transport = ResilientTransport(
        httpx.MockTransport(_gzip_handler(bodies)), pipeline=_pipeline(clock)
    )
    with httpx.Client(transport=transport) as client:
        response = client.get(URL)
        assert bodies[-1].closed
        assert response.text == "hello, " * 100
        assert response.is_closed
        assert response.elapsed.total_seconds() >= 0
        with client.stream("GET", URL) as streamed:
            assert not streamed.is_stream_consumed
            assert b"".join(streamed.iter_bytes()) == b"hello, " * 100
        assert streamed.is_closed


async def test_async_response_is_decoded_once_closed_and_timed_like_httpxs(
    clock: FakeClock,
) -> None:
    """The async transport hands back the same kind of response."""
    bodies: list[_Body] = []
    transport = AsyncResilientTransport(
        httpx.MockTransport(_gzip_handler(bodies)), pipeline=_pipeline(clock)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(URL)
        assert bodies[-1].closed
        assert response.text == "hello, " * 100
        assert response.is_closed
        assert response.elapsed.total_seconds() >= 0
        async with client.stream("GET", URL) as streamed:
            assert not streamed.is_stream_consumed
            assert b"".join([c async for c in streamed.aiter_bytes()]) == b"hello, " * 100


# -- timeout ---------------------------------------------------------------------------


def test_ctx_timeout_reaches_the_request(clock: FakeClock) -> None:
    """The per-try timeout is handed to httpx in ``request.extensions["timeout"]``."""
    script = Script(200)
    p = Pipeline(Timeout(0.7), timer=clock)
    with _client(script, p) as client:
        client.get(URL, timeout=5.0)
    assert script.requests[0].extensions["timeout"] == {
        "connect": 0.7,
        "read": 0.7,
        "write": 0.7,
        "pool": 0.7,
    }


def test_shorter_client_timeout_is_kept(clock: FakeClock) -> None:
    """A client timeout shorter than the per-try timeout is not lengthened."""
    script = Script(200)
    p = Pipeline(Timeout(0.7), timer=clock)
    with _client(script, p) as client:
        client.get(URL, timeout=httpx.Timeout(5.0, connect=0.2))
    timeout = script.requests[0].extensions["timeout"]
    assert timeout["connect"] == 0.2
    assert timeout["read"] == 0.7


# -- breaker ---------------------------------------------------------------------------


def test_breaker_opens_after_repeated_5xx_and_stops_calling(clock: FakeClock) -> None:
    """Repeated 503s open the breaker; the next request raises CircuitOpen without I/O."""
    script = Script(503)
    p = _pipeline(clock, attempts=1, window_size=3, minimum_calls=3)
    with _client(script, p) as client:
        for _ in range(3):
            assert client.get(URL).status_code == 503
        assert p.breaker is not None
        assert p.breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen):
            client.get(URL)
    assert len(script.requests) == 3


def test_client_closes_the_inner_transport() -> None:
    """Closing the client closes the transport that does the I/O."""
    closed: list[bool] = []

    class Inner(httpx.MockTransport):
        def close(self) -> None:
            closed.append(True)

    with httpx.Client(
        transport=ResilientTransport(Inner(Script(200)), pipeline=Pipeline(timer=FakeClock()))
    ):
        pass
    assert closed == [True]


# -- async -----------------------------------------------------------------------------


async def test_async_503_then_200_is_retried_once(clock: FakeClock) -> None:
    """The async transport retries a 503 and returns the 200."""
    script = Script(503, 200)
    async with _aclient(script, _pipeline(clock)) as client:
        response = await client.get(URL)
    assert response.status_code == 200
    assert len(script.requests) == 2


async def test_async_503_forever_returns_the_last_503(clock: FakeClock) -> None:
    """The async transport returns the last 503 after every try."""
    script = Script(503)
    async with _aclient(script, _pipeline(clock)) as client:
        response = await client.get(URL)
    assert response.status_code == 503
    assert response.text == "status 503"
    assert len(script.requests) == 3


async def test_async_post_without_key_is_not_retried_after_a_read_error(
    clock: FakeClock,
) -> None:
    """The async transport does not resend a POST that may have executed."""
    script = Script(httpx.ReadError, 200)
    async with _aclient(script, _pipeline(clock)) as client:
        with pytest.raises(httpx.ReadError):
            await client.post(URL, json={})
    assert len(script.requests) == 1


async def test_async_post_without_key_is_retried_after_a_connect_error(
    clock: FakeClock,
) -> None:
    """The async transport retries a POST whose connection was refused."""
    script = Script(httpx.ConnectError, 200)
    async with _aclient(script, _pipeline(clock)) as client:
        assert (await client.post(URL, json={})).status_code == 200
    assert len(script.requests) == 2


async def test_async_post_with_key_reuses_the_key(clock: FakeClock) -> None:
    """The async transport retries a keyed POST with the same key."""
    script = Script(httpx.ReadError, 200)
    async with _aclient(script, _pipeline(clock)) as client:
        response = await client.post(URL, json={}, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 200
    assert [r.headers["idempotency-key"] for r in script.requests] == ["k-1", "k-1"]


async def test_async_ctx_timeout_reaches_the_request(clock: FakeClock) -> None:
    """The async transport hands the per-try timeout to httpx too."""
    script = Script(200)
    async with _aclient(script, Pipeline(Timeout(0.3), timer=clock)) as client:
        await client.get(URL, timeout=5.0)
    assert script.requests[0].extensions["timeout"]["read"] == 0.3


async def test_async_breaker_opens_and_stops_calling(clock: FakeClock) -> None:
    """The async transport raises CircuitOpen once the breaker opens, without I/O."""
    script = Script(500)
    p = _pipeline(clock, attempts=1, window_size=2, minimum_calls=2)
    async with _aclient(script, p) as client:
        for _ in range(2):
            assert (await client.get(URL)).status_code == 500
        with pytest.raises(CircuitOpen):
            await client.get(URL)
    assert len(script.requests) == 2


# -- async per-try timeout -------------------------------------------------------------


def _hanging(seen: list[httpx.Request]) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await asyncio.Event().wait()
        return httpx.Response(200)

    return httpx.MockTransport(handler)


def _timing_out(clock: FakeClock) -> Pipeline:
    return Pipeline(Retry(3), Timeout(0.05), name="kakao", timer=clock)


async def test_async_get_cut_by_the_per_try_timeout_is_retried(clock: FakeClock) -> None:
    """A GET that hangs is cancelled at the per-try timeout and tried again."""
    seen: list[httpx.Request] = []
    transport = AsyncResilientTransport(_hanging(seen), pipeline=_timing_out(clock))
    async with httpx.AsyncClient(transport=transport) as client, asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await client.get(URL)
    assert len(seen) == 3


async def test_async_post_cut_by_the_per_try_timeout_is_not_resent(clock: FakeClock) -> None:
    """A POST without a key that was sent and then timed out is never sent again."""
    seen: list[httpx.Request] = []
    transport = AsyncResilientTransport(_hanging(seen), pipeline=_timing_out(clock))
    async with httpx.AsyncClient(transport=transport) as client, asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await client.post(URL, json={"amount": 1000})
    assert len(seen) == 1


async def test_async_keyed_post_cut_by_the_per_try_timeout_is_retried(clock: FakeClock) -> None:
    """A POST with an Idempotency-Key may be sent again after a timeout, with its key."""
    seen: list[httpx.Request] = []
    transport = AsyncResilientTransport(_hanging(seen), pipeline=_timing_out(clock))
    async with httpx.AsyncClient(transport=transport) as client, asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await client.post(URL, json={}, headers={"Idempotency-Key": "k-2"})
    assert [r.headers["idempotency-key"] for r in seen] == ["k-2"] * 3
