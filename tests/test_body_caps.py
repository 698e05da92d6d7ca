"""Body caps on a real loopback server: wire bytes, decoded bytes and compression ratio."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from superapp_sdk._errors import ProviderError
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.providers._http import (
    MAX_BODY_BYTES,
    MAX_COMPRESSION_RATIO,
    BodyDecoder,
    Flow,
    arun_call,
    read_json,
    run_call,
)
from superapp_sdk.resilience import (
    AsyncResilientTransport,
    CircuitBreaker,
    Pipeline,
    ResilientTransport,
    Retry,
)
from superapp_sdk.testing import FakeClock, UvicornServer
from superapp_sdk.testing._servers import Receive, Scope, Send

pytestmark = pytest.mark.network

CAP = MAX_BODY_BYTES
PAYLOAD = {"ok": True, "items": [{"id": i, "name": f"item-{i}"} for i in range(50)]}


def _compress(wbits: int, pieces: Iterator[bytes]) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join(packer.compress(p) for p in pieces) + packer.flush()


def _zeros(mib: int) -> Iterator[bytes]:
    # Fed a MiB at a time, so the test never holds the inflated bomb itself.
    return (bytes(1 << 20) for _ in range(mib))


GZIP = zlib.MAX_WBITS | 16
#: 60 MiB of zeros: about 61 KB on the wire.
GZIP_BOMB = _compress(GZIP, _zeros(60))
DEFLATE_BOMB = _compress(zlib.MAX_WBITS, _zeros(60))
#: JSON records that compress about 10:1: well under the ratio and under the cap on the
#: wire, over the cap once decoded.
DENSE = json.dumps(
    [{"id": i, "name": f"user-{i * 7919 % 100003}", "ok": i % 3 == 0} for i in range(90_000)]
).encode()
DENSE_GZIP = gzip.compress(DENSE)
BIG = b'{"pad": "' + b"x" * (CAP + 100) + b'"}'

BODIES: dict[str, tuple[bytes, str | None]] = {
    "/json": (json.dumps(PAYLOAD).encode(), None),
    "/json-gzip": (gzip.compress(json.dumps(PAYLOAD).encode()), "gzip"),
    "/json-deflate": (zlib.compress(json.dumps(PAYLOAD).encode()), "deflate"),
    "/json-raw-deflate": (
        _compress(-zlib.MAX_WBITS, iter([json.dumps(PAYLOAD).encode()])),
        "deflate",
    ),
    "/json-br": (json.dumps(PAYLOAD).encode(), "br"),
    "/gzip-bomb": (GZIP_BOMB, "gzip"),
    "/deflate-bomb": (DEFLATE_BOMB, "deflate"),
    "/dense-gzip": (DENSE_GZIP, "gzip"),
    "/big": (BIG, None),
    "/not-gzip": (b'{"ok": true}', "gzip"),
}


class App:
    """Answers each path of ``BODIES`` with its body and coding; counts requests."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        self.hits[scope["path"]] += 1
        body, coding = BODIES[scope["path"]]
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if coding:
            headers.append((b"content-encoding", coding.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def app() -> App:
    return App()


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[UvicornServer]:
    with UvicornServer(app, lifespan="off") as running:
        yield running


def _fetch(url: str, method: str = "GET") -> Flow[dict[str, Any]]:
    response = yield httpx.Request(method, url)
    return read_json(response, provider="test", operation="test.fetch")


def _call(server: UvicornServer, path: str) -> dict[str, Any]:
    with httpx.Client() as client:
        return run_call(client, _fetch(server.url + path), provider="test", operation="test.fetch")


async def _acall(server: UvicornServer, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return await arun_call(
            client, _fetch(server.url + path), provider="test", operation="test.fetch"
        )


def _refused(server: UvicornServer, path: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        _call(server, path)
    assert caught.value.request_sent is True
    assert caught.value.http_status == 200
    return caught.value


async def _arefused(server: UvicornServer, path: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await _acall(server, path)
    assert caught.value.request_sent is True
    return caught.value


# -- the fixtures are what they claim to be --------------------------------------------


def test_fixture_bodies_sit_where_each_test_needs_them() -> None:
    """The bomb is small on the wire; the dense body passes the wire cap and the ratio."""
    assert len(GZIP_BOMB) < 100_000
    assert len(DEFLATE_BOMB) < 100_000
    assert len(DENSE_GZIP) < CAP < len(DENSE)
    assert len(DENSE) < MAX_COMPRESSION_RATIO * len(DENSE_GZIP) / 2
    assert len(BIG) > CAP


# -- answers under the caps ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/json", "/json-gzip", "/json-deflate", "/json-raw-deflate"])
def test_answer_under_the_caps_is_decoded(server: UvicornServer, path: str) -> None:
    """Identity, gzip, zlib-wrapped and raw deflate answers under the caps arrive whole."""
    assert _call(server, path) == PAYLOAD


@pytest.mark.parametrize("path", ["/json", "/json-gzip", "/json-deflate", "/json-raw-deflate"])
async def test_async_answer_under_the_caps_is_decoded(server: UvicornServer, path: str) -> None:
    """The async driver decodes the same answers."""
    assert await _acall(server, path) == PAYLOAD


def test_decoded_answer_drops_the_wire_headers(server: UvicornServer) -> None:
    """The flow gets the decoded body without the content coding that described the wire."""
    seen: list[httpx.Response] = []

    def flow() -> Flow[bytes]:
        response = yield httpx.Request("GET", server.url + "/json-gzip")
        seen.append(response)
        return response.content

    with httpx.Client() as client:
        body = run_call(client, flow(), provider="test", operation="test.fetch")
    assert json.loads(body) == PAYLOAD
    assert "content-encoding" not in seen[0].headers
    assert seen[0].headers["content-length"] == str(len(body))


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/gzip-bomb", "/deflate-bomb"])
def test_bomb_is_refused_on_its_ratio(server: UvicornServer, path: str) -> None:
    """60 MiB of zeros in 61 KB is refused as a compression ratio."""
    assert _refused(server, path).code == "compression_ratio"


@pytest.mark.parametrize("path", ["/gzip-bomb", "/deflate-bomb"])
async def test_async_bomb_is_refused_on_its_ratio(server: UvicornServer, path: str) -> None:
    """The async driver refuses the same bombs."""
    assert (await _arefused(server, path)).code == "compression_ratio"


def test_dense_body_over_the_cap_once_decoded_is_refused(server: UvicornServer) -> None:
    """An answer under the wire cap and the ratio, over the cap decoded, names the decoded cap."""
    assert _refused(server, "/dense-gzip").code == "decoded_too_large"


async def test_async_dense_body_over_the_cap_once_decoded_is_refused(
    server: UvicornServer,
) -> None:
    """The async driver names the decoded cap too."""
    assert (await _arefused(server, "/dense-gzip")).code == "decoded_too_large"


def test_plain_body_over_the_cap_is_refused_on_the_wire(server: UvicornServer) -> None:
    """An uncompressed answer over the cap names the wire cap."""
    assert _refused(server, "/big").code == "body_too_large"


async def test_async_plain_body_over_the_cap_is_refused_on_the_wire(
    server: UvicornServer,
) -> None:
    """The async driver names the wire cap too."""
    assert (await _arefused(server, "/big")).code == "body_too_large"


@pytest.mark.parametrize("path", ["/json-br", "/not-gzip"])
def test_undecodable_body_is_refused(server: UvicornServer, path: str) -> None:
    """A coding the SDK cannot bound, or a body that does not decode, is refused by name."""
    assert _refused(server, path).code == "bad_encoding"


# -- memory ----------------------------------------------------------------------------


def _peak(server: UvicornServer, path: str) -> int:
    # The client (and its TLS context) is built before tracing starts: only the call counts.
    with httpx.Client() as client:
        tracemalloc.start()
        try:
            with pytest.raises(ProviderError):
                run_call(client, _fetch(server.url + path), provider="test", operation="test.fetch")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


@pytest.mark.parametrize("path", ["/gzip-bomb", "/dense-gzip", "/big"])
def test_refused_answer_never_costs_more_than_three_caps(server: UvicornServer, path: str) -> None:
    """Peak traced allocation while a bomb, a dense body or a big body is refused stays
    under three times the cap."""
    assert _peak(server, path) < 3 * CAP


# -- the decoder alone -----------------------------------------------------------------


def test_decoder_stops_a_bomb_fed_in_one_chunk_within_a_step() -> None:
    """A whole bomb fed at once, with the ratio off, stops one step past the decoded cap."""
    decoder = BodyDecoder("gzip", max_ratio=float("inf"))
    with pytest.raises(ProviderError) as caught:
        decoder.feed(GZIP_BOMB)
    assert caught.value.code == "decoded_too_large"
    assert decoder.decoded_bytes <= CAP + (64 << 10)


# -- the resilient transport -----------------------------------------------------------


def _pipeline() -> Pipeline:
    return Pipeline(CircuitBreaker(BreakerOptions()), Retry(3), name="kakao", timer=FakeClock())


@pytest.mark.parametrize(
    ("path", "code"),
    [("/big", "body_too_large"), ("/gzip-bomb", "compression_ratio")],
)
def test_transport_refuses_a_body_over_its_limits(
    server: UvicornServer, path: str, code: str
) -> None:
    """A plain httpx client behind ResilientTransport gets the typed refusal, not a bomb."""
    with (
        httpx.Client(transport=ResilientTransport(pipeline=_pipeline())) as client,
        pytest.raises(ProviderError) as caught,
    ):
        client.get(server.url + path)
    assert caught.value.code == code
    assert caught.value.provider == "kakao"


async def test_async_transport_refuses_a_bomb(server: UvicornServer) -> None:
    """The async transport refuses the bomb too."""
    transport = AsyncResilientTransport(pipeline=_pipeline())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ProviderError) as caught:
            await client.get(server.url + "/gzip-bomb")
    assert caught.value.code == "compression_ratio"


def test_transport_hands_a_gzip_answer_to_the_flow_decoded_once(server: UvicornServer) -> None:
    """Behind the transport, a flow's gzip answer is decoded once, by the driver."""
    with httpx.Client(transport=ResilientTransport(pipeline=_pipeline())) as client:
        data = run_call(
            client, _fetch(server.url + "/json-gzip"), provider="test", operation="test.fetch"
        )
    assert data == PAYLOAD


def test_transport_does_not_resend_a_post_whose_answer_was_refused(
    server: UvicornServer, app: App
) -> None:
    """A POST without an idempotency key answered with a bomb has executed: sent once."""
    before = app.hits["/gzip-bomb"]
    with (
        httpx.Client(transport=ResilientTransport(pipeline=_pipeline())) as client,
        pytest.raises(ProviderError),
    ):
        client.post(server.url + "/gzip-bomb")
    assert app.hits["/gzip-bomb"] == before + 1


def test_transport_retries_a_get_whose_answer_was_refused(server: UvicornServer, app: App) -> None:
    """A GET answered with a bomb may be tried again, as another answer may be usable."""
    before = app.hits["/gzip-bomb"]
    with (
        httpx.Client(transport=ResilientTransport(pipeline=_pipeline())) as client,
        pytest.raises(ProviderError),
    ):
        client.get(server.url + "/gzip-bomb")
    assert app.hits["/gzip-bomb"] == before + 3
