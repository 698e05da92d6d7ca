"""Sans-IO provider flows and the shells that drive them.

A provider operation over HTTP is a generator that yields ``httpx.Request`` objects and
receives ``httpx.Response`` objects, then returns a model (the pattern of httpx's auth
flows). One flow serves the sync and the async client, and a unit test can drive it with
plain ``httpx.Response`` objects::

    def send(self, ...) -> Flow[MessageReceipt]:
        response = yield httpx.Request("POST", url, json=...)
        data = read_json(response, provider=self.name, operation="chat.send")
        return MessageReceipt(...)

Non-HTTP providers (SMTP) return a :class:`DirectCall` instead, with a sync and an async
implementation.

The drivers turn transport failures into the SDK's error tree and record whether the
request may have reached the provider (``request_sent``): a connection that was never
made proves a payment did not execute; a read timeout proves nothing.

The drivers read the answer's raw bytes and decode them through :class:`BodyDecoder`,
which bounds both the bytes off the wire and the bytes they inflate to, and refuses a
compression ratio no JSON answer has: a 61 KB gzip answer that inflates to 60 MiB is
refused after a few KiB of output, never materialised.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import httpx

from superapp_sdk._errors import (
    Declined,
    InvalidRequest,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
    RateLimited,
    SuperAppError,
    Unauthorized,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_COMPRESSION_RATIO",
    "RATIO_FLOOR_BYTES",
    "BodyDecoder",
    "Call",
    "DirectCall",
    "Flow",
    "arun_call",
    "field",
    "json_object",
    "parse_retry_after",
    "read_json",
    "run_call",
    "status_error",
]

T = TypeVar("T")

#: A sans-IO provider operation.
Flow: TypeAlias = Generator[httpx.Request, httpx.Response, T]

#: Provider answers larger than this are refused (a provider never needs more for the
#: operations the SDK performs; a bigger body is a fault or an attack).
MAX_BODY_BYTES = 1 << 20

#: A compressed answer that inflates more than this many times over is refused once it
#: has produced more than :data:`RATIO_FLOOR_BYTES`: JSON compresses 5-20:1, a run of
#: zeros (a decompression bomb) about 1000:1.
MAX_COMPRESSION_RATIO = 100

#: Decoded bytes below which the ratio is not judged (a tiny answer of repeated
#: characters can compress far beyond the ratio and costs nothing).
RATIO_FLOOR_BYTES = 64 << 10

# Decoded output is produced in steps of at most this many bytes, so a bomb is refused
# within one step of a limit instead of after inflating a whole wire chunk.
_DECODE_STEP = 64 << 10

# Content codings the decoder bounds (RFC 9110 section 8.4.1); x-gzip is gzip's alias.
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True, slots=True)
class DirectCall(Generic[T]):
    """An operation of a non-HTTP provider: a sync and an async implementation."""

    run: Callable[[float | None], T]
    arun: Callable[[float | None], Awaitable[T]]


#: What a provider operation returns: a flow, or a direct call.
Call: TypeAlias = "Flow[T] | DirectCall[T]"


def _with_timeout(request: httpx.Request, timeout: float | None) -> httpx.Request:
    if timeout is not None:
        request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
    return request


def _transport_error(exc: httpx.TransportError, provider: str, operation: str) -> SuperAppError:
    # Exceptions raised before a byte reached the provider prove the request did not
    # execute; anything after the connection was made may have executed.
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return OperationTimeout(
            f"connect timed out: {exc}", provider=provider, operation=operation, request_sent=False
        )
    if isinstance(exc, httpx.ConnectError):
        return ProviderConnectError(
            f"could not connect: {exc}", provider=provider, operation=operation, request_sent=False
        )
    if isinstance(exc, httpx.TimeoutException):
        return OperationTimeout(
            f"timed out waiting for the answer: {type(exc).__name__}",
            provider=provider,
            operation=operation,
            request_sent=True,
        )
    return ProviderConnectError(
        f"connection failed: {type(exc).__name__}: {exc}",
        provider=provider,
        operation=operation,
        request_sent=True,
    )


class BodyDecoder:
    """Counts an answer's bytes off the wire, decodes its content coding, and refuses it
    at the first limit it breaks. Sans-IO: the drivers feed it raw chunks and keep what it
    returns.

    Limits, each a :class:`ProviderError` with ``request_sent=True`` and a ``code``
    naming it:

    * ``"body_too_large"``: more than ``max_bytes`` bytes off the wire;
    * ``"decoded_too_large"``: more than ``max_bytes`` bytes once decoded;
    * ``"compression_ratio"``: more than ``max_ratio`` decoded bytes per wire byte, once
      more than ``ratio_floor`` bytes are decoded;
    * ``"bad_encoding"``: a coding other than identity, gzip or deflate, or a body that
      does not decode.

    Decoding is incremental with a bounded output step, so the decoder never holds more
    than a limit plus one step, whatever a wire chunk inflates to.

    Args:
        content_encoding: the answer's ``Content-Encoding`` header, if any.
        max_bytes: the cap on wire bytes and on decoded bytes.
        provider, operation, http_status: carried by the error.
        max_ratio, ratio_floor: the compression ratio limit and the output it starts at.
    """

    __slots__ = (
        "_consumed",
        "_decoded",
        "_error",
        "_inflater",
        "_max_bytes",
        "_max_ratio",
        "_ratio_floor",
        "_raw_deflate_tried",
        "_wire",
    )

    def __init__(
        self,
        content_encoding: str | None,
        *,
        max_bytes: int = MAX_BODY_BYTES,
        provider: str | None = None,
        operation: str | None = None,
        http_status: int | None = None,
        max_ratio: float = MAX_COMPRESSION_RATIO,
        ratio_floor: int = RATIO_FLOOR_BYTES,
    ) -> None:
        self._max_bytes = max_bytes
        self._max_ratio = max_ratio
        self._ratio_floor = ratio_floor
        self._error: dict[str, Any] = {
            "provider": provider,
            "operation": operation,
            "http_status": http_status,
            "request_sent": True,
        }
        self._wire = 0
        self._consumed = 0
        self._decoded = 0
        self._raw_deflate_tried = False
        coding = (content_encoding or "identity").strip().lower()
        self._inflater: Any = None
        if coding in _WBITS:
            self._inflater = zlib.decompressobj(_WBITS[coding])
            self._raw_deflate_tried = coding != "deflate"
        elif coding not in ("identity", ""):
            raise self._refuse("bad_encoding", f"answer has content coding {coding!r}")

    @property
    def wire_bytes(self) -> int:
        """Bytes fed so far, as they came off the wire."""
        return self._wire

    @property
    def decoded_bytes(self) -> int:
        """Bytes decoded so far."""
        return self._decoded

    def _refuse(self, code: str, message: str) -> ProviderError:
        return ProviderError(message, code=code, **self._error)

    def feed(self, raw: bytes) -> list[bytes]:
        """The decoded bytes of the next raw chunk; raises at the first limit broken."""
        self._wire += len(raw)
        if self._wire > self._max_bytes:
            raise self._refuse(
                "body_too_large", f"answer exceeds the {self._max_bytes}-byte cap off the wire"
            )
        if self._inflater is None:
            self._decoded += len(raw)
            return [raw] if raw else []
        out: list[bytes] = []
        data = raw
        while True:
            before = len(data)
            try:
                piece = self._inflater.decompress(data, _DECODE_STEP)
            except zlib.error as exc:
                if self._raw_deflate_tried:
                    raise self._refuse("bad_encoding", f"answer does not decode: {exc}") from exc
                # "deflate" is zlib-wrapped (RFC 9110 section 8.4.1.2), but some servers
                # send a raw deflate stream; httpx's decoder accepts both, and so do we.
                self._raw_deflate_tried = True
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self._raw_deflate_tried = True
            data = self._inflater.unconsumed_tail
            self._consumed += before - len(data)
            self._count(piece)
            if piece:
                out.append(piece)
            if not data and len(piece) < _DECODE_STEP:
                return out

    def finish(self) -> list[bytes]:
        """The decoded bytes still held by the decoder, once the body has ended."""
        if self._inflater is None:
            return []
        try:
            piece: bytes = self._inflater.flush()
        except zlib.error as exc:  # pragma: no cover - zlib reports errors on decompress
            raise self._refuse("bad_encoding", f"answer does not decode: {exc}") from exc
        self._count(piece)
        return [piece] if piece else []

    def _count(self, piece: bytes) -> None:
        self._decoded += len(piece)
        if self._decoded > self._max_bytes:
            raise self._refuse(
                "decoded_too_large",
                f"answer exceeds the {self._max_bytes}-byte cap once decoded",
            )
        if self._decoded > self._ratio_floor and self._decoded > self._max_ratio * max(
            self._consumed, 1
        ):
            raise self._refuse(
                "compression_ratio",
                f"answer inflates more than {self._max_ratio:g}:1 "
                f"({self._consumed} wire bytes gave {self._decoded})",
            )


def _decoder(
    response: httpx.Response, provider: str, operation: str, max_bytes: int
) -> BodyDecoder:
    return BodyDecoder(
        response.headers.get("content-encoding"),
        max_bytes=max_bytes,
        provider=provider,
        operation=operation,
        http_status=response.status_code,
    )


def _decoded(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
    # The body is handed on decoded, so the headers that describe the wire form go.
    headers = httpx.Headers(response.headers)
    for name in ("content-encoding", "content-length"):
        headers.pop(name, None)
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=b"".join(chunks),
        request=response.request,
        extensions=response.extensions,
    )


def _send(
    client: httpx.Client, request: httpx.Request, provider: str, operation: str, max_bytes: int
) -> httpx.Response:
    try:
        response = client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    try:
        decoder = _decoder(response, provider, operation, max_bytes)
        chunks: list[bytes] = []
        for raw in response.iter_raw():
            chunks += decoder.feed(raw)
        chunks += decoder.finish()
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    finally:
        response.close()
    return _decoded(response, chunks)


async def _asend(
    client: httpx.AsyncClient,
    request: httpx.Request,
    provider: str,
    operation: str,
    max_bytes: int,
) -> httpx.Response:
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    try:
        decoder = _decoder(response, provider, operation, max_bytes)
        chunks: list[bytes] = []
        async for raw in response.aiter_raw():
            chunks += decoder.feed(raw)
        chunks += decoder.finish()
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    finally:
        await response.aclose()
    return _decoded(response, chunks)


def run_call(
    client: httpx.Client,
    call: Flow[T] | DirectCall[T],
    *,
    provider: str,
    operation: str,
    timeout: float | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> T:
    """Drive a provider operation to completion with a sync client.

    Raises the SDK's errors: transport failures become :class:`ProviderConnectError` or
    :class:`OperationTimeout` with ``request_sent`` set; an answer that breaks a body limit
    of :class:`BodyDecoder` (``max_bytes`` off the wire or decoded, the compression ratio)
    is a :class:`ProviderError` whose ``code`` names the limit; the flow raises the rest.
    """
    if isinstance(call, DirectCall):
        return call.run(timeout)
    try:
        request = next(call)
        while True:
            response = _send(
                client, _with_timeout(request, timeout), provider, operation, max_bytes
            )
            request = call.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        call.close()


async def arun_call(
    client: httpx.AsyncClient,
    call: Flow[T] | DirectCall[T],
    *,
    provider: str,
    operation: str,
    timeout: float | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> T:
    """Drive a provider operation to completion with an async client; as :func:`run_call`."""
    if isinstance(call, DirectCall):
        return await call.arun(timeout)
    try:
        request = next(call)
        while True:
            response = await _asend(
                client, _with_timeout(request, timeout), provider, operation, max_bytes
            )
            request = call.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        call.close()


# -- reading answers -------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (RFC 9110 section 10.2.3), delta form only.

    The HTTP-date form is ignored (``None``): the SDK measures time on a monotonic clock
    and will not trust a remote wall clock for it.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        return None
    return seconds


def status_error(
    response: httpx.Response,
    *,
    provider: str,
    operation: str,
    message: str | None = None,
    code: str | None = None,
    declined: bool = False,
) -> SuperAppError:
    """The SDK error for a non-2xx answer.

    401/403 -> :class:`Unauthorized`; 429 -> :class:`RateLimited` (``Retry-After``
    honoured); 5xx and anything unexpected -> :class:`ProviderError` (retryable); other
    4xx -> :class:`InvalidRequest`, or :class:`Declined` when the adapter says the
    provider refused on business grounds.
    """
    status = response.status_code
    request_id = response.headers.get("x-request-id") or response.headers.get("x-b3-traceid")
    text = message or f"HTTP {status}"
    common: dict[str, Any] = {
        "provider": provider,
        "operation": operation,
        "http_status": status,
        "code": code,
        "request_id": request_id,
        "request_sent": True,
    }
    if status == 429:
        return RateLimited(
            text, retry_after=parse_retry_after(response.headers.get("retry-after")), **common
        )
    if status in (401, 403):
        return Unauthorized(text, **common)
    if 400 <= status < 500:
        return Declined(text, **common) if declined else InvalidRequest(text, **common)
    return ProviderError(
        text, retry_after=parse_retry_after(response.headers.get("retry-after")), **common
    )


def read_json(response: httpx.Response, *, provider: str, operation: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or a :class:`ProviderError` naming what is wrong.

    Refuses HTML error pages, malformed or truncated JSON, and top-level values that are
    not objects.
    """
    if not 200 <= response.status_code < 300:
        raise status_error(response, provider=provider, operation=operation)
    return json_object(response, provider=provider, operation=operation)


def json_object(response: httpx.Response, *, provider: str, operation: str) -> dict[str, Any]:
    """The body as a JSON object whatever the status; :class:`ProviderError` if it is not."""
    content_type = response.headers.get("content-type", "")
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "an HTML page" if "html" in content_type else "malformed JSON"
        raise ProviderError(
            f"answer is {kind}, not JSON ({exc.__class__.__name__})",
            provider=provider,
            operation=operation,
            http_status=response.status_code,
            request_sent=True,
        ) from exc
    if not isinstance(data, dict):
        raise ProviderError(
            f"answer is a JSON {type(data).__name__}, expected an object",
            provider=provider,
            operation=operation,
            http_status=response.status_code,
            request_sent=True,
        )
    return data


def field(
    data: dict[str, Any],
    name: str,
    kind: type[T] | tuple[type, ...],
    *,
    provider: str,
    operation: str,
    optional: bool = False,
) -> T:
    """``data[name]`` checked to be of ``kind``; a :class:`ProviderError` naming the field.

    ``bool`` is never accepted where ``int`` is asked for (JSON ``true`` is not an amount).
    """
    if name not in data or data[name] is None:
        if optional:
            return None  # type: ignore[return-value]
        raise ProviderError(
            f"answer lacks field {name!r}",
            provider=provider,
            operation=operation,
            request_sent=True,
        )
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ProviderError(
            f"field {name!r} is {type(value).__name__}, expected {expected}",
            provider=provider,
            operation=operation,
            request_sent=True,
        )
    return value  # type: ignore[return-value]
