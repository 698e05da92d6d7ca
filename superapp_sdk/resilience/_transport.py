"""httpx transports that run every request through a pipeline.

::

    client = httpx.Client(transport=ResilientTransport(pipeline=Pipeline.for_read("api")))

A response with a status in ``failure_statuses`` (5xx, 429) counts as a failure for the
breaker and the retry loop; if the last try still gets one, that response is returned to
the caller, as httpx would have. Transport errors are raised as httpx raised them,
unless the pipeline refused the call (``CircuitOpen``, ``BulkheadFull``) or the deadline
passed (``OperationTimeout``).

Response bodies are read inside each try, under its timeout, so an answer is judged
whole; the transport is meant for API calls, not for streaming large downloads. The
response handed back carries the body as it came off the wire, unread: the client decodes
it, closes it and sets ``elapsed`` exactly as it does for a response from the network.

While it reads, the transport holds the body to ``max_body_bytes`` off the wire and runs
it through the SDK's bounded decoder (:class:`~superapp_sdk.providers._http.BodyDecoder`),
keeping none of the decoded output: an answer over the cap, over the cap once decoded, or
inflating past the compression ratio limit raises :class:`ProviderError` with a ``code``
naming the limit (``"body_too_large"``, ``"decoded_too_large"``, ``"compression_ratio"``,
``"bad_encoding"``), so even a plain httpx client behind the transport never inflates a
bomb. Decoding the body it hands back is still the client's: an SDK flow decodes it with
the same bounds, a plain httpx client with its own decoders.

Non-idempotent requests (POST, PATCH) are retried only when they carry an
``Idempotency-Key`` header, or when the error proves the request never left (a refused
connection), as stripe-python does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import httpx

from superapp_sdk._errors import NoAnswer, ProviderError
from superapp_sdk.providers._http import MAX_BODY_BYTES, BodyDecoder, parse_retry_after
from superapp_sdk.resilience._base import NO_RETRY_ATTR, CallContext
from superapp_sdk.resilience._pipeline import Pipeline

__all__ = ["AsyncResilientTransport", "ResilientTransport"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
FAILURE_STATUSES = frozenset({429, 500, 502, 503, 504})


class FailedResponse(NoAnswer):
    """A response whose status counts as a failure; carries the response."""

    def __init__(self, response: httpx.Response, *, retryable: bool) -> None:
        super().__init__(
            f"HTTP {response.status_code}",
            http_status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            retryable=retryable,
            request_sent=True,
        )
        self.response = response


def _with_timeout(request: httpx.Request, ctx: CallContext) -> None:
    # Each phase gets the shorter of the client's timeout and the try's; written out
    # rather than looped, as it runs on every try.
    t = ctx.timeout
    if t is None:
        return
    get = (request.extensions.get("timeout") or {}).get
    connect, read, write, pool = get("connect"), get("read"), get("write"), get("pool")
    request.extensions["timeout"] = {
        "connect": t if connect is None or connect > t else connect,
        "read": t if read is None or read > t else read,
        "write": t if write is None or write > t else write,
        "pool": t if pool is None or pool > t else pool,
    }


def _body_decoder(
    request: httpx.Request, response: httpx.Response, pipeline: Pipeline, max_bytes: int
) -> BodyDecoder:
    return BodyDecoder(
        response.headers.get("content-encoding"),
        max_bytes=max_bytes,
        provider=pipeline.name,
        operation=f"{request.method} {request.url.path}",
        http_status=response.status_code,
    )


def _refuse_identity(
    request: httpx.Request,
    response: httpx.Response,
    pipeline: Pipeline,
    max_bytes: int,
    chunks: list[bytes],
) -> None:
    """Raise the decoder's wire-cap error for an unencoded body past ``max_bytes``."""
    decoder = _body_decoder(request, response, pipeline, max_bytes)
    for chunk in chunks:
        decoder.feed(chunk)
    raise AssertionError("the decoder accepted a body over its cap")  # pragma: no cover


def _mark_answered(exc: ProviderError, retryable: bool) -> None:
    # The request was answered, so a non-idempotent one has executed: not sent again.
    if not retryable:
        setattr(exc, NO_RETRY_ATTR, True)


def _retryable(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


def _mark(exc: httpx.TransportError, retryable: bool) -> httpx.TransportError:
    # A refused connection proves the request never left; any other transport error
    # after the first byte may have executed a non-idempotent request.
    if not retryable and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        setattr(exc, NO_RETRY_ATTR, True)
    return exc


class ResilientTransport(httpx.BaseTransport):
    """An httpx transport that sends every request through ``pipeline``.

    Args:
        transport: the transport that does the I/O (default ``httpx.HTTPTransport()``).
        pipeline: the resilience pipeline (default ``Pipeline.for_read``).
        failure_statuses: statuses that count as failures.
        max_body_bytes: the cap on an answer's body, off the wire and once decoded.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        pipeline: Pipeline | None = None,
        failure_statuses: Collection[int] = FAILURE_STATUSES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.transport = transport or httpx.HTTPTransport()
        self.pipeline = pipeline or Pipeline.for_read("http")
        self.failure_statuses = frozenset(failure_statuses)
        self.max_body_bytes = max_body_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline."""
        retryable = request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        if retryable and not isinstance(request.stream, httpx.ByteStream):
            request.read()  # a retry must be able to send the body again
        inner = self.transport
        statuses = self.failure_statuses
        pipeline, max_bytes = self.pipeline, self.max_body_bytes

        def attempt(ctx: CallContext) -> httpx.Response:
            _with_timeout(request, ctx)
            try:
                response = inner.handle_request(request)
                # The body is read inside the try, under its timeout: an answer is judged
                # (and its latency measured) whole, and a stall mid-body is retried.
                stream = response.stream
                assert isinstance(stream, httpx.SyncByteStream)
                try:
                    chunks: list[bytes] = []
                    if "content-encoding" in response.headers:
                        decoder = _body_decoder(request, response, pipeline, max_bytes)
                        for chunk in stream:
                            decoder.feed(chunk)
                            chunks.append(chunk)
                        decoder.finish()
                    else:
                        # Identity (the common case): the wire cap is the whole check, and
                        # no decoder is built unless it is broken.
                        size = 0
                        for chunk in stream:
                            size += len(chunk)
                            chunks.append(chunk)
                            if size > max_bytes:
                                _refuse_identity(request, response, pipeline, max_bytes, chunks)
                finally:
                    stream.close()
            except httpx.TransportError as exc:
                raise _mark(exc, retryable) from None
            except ProviderError as exc:
                _mark_answered(exc, retryable)
                raise
            body = b"".join(chunks)
            response.stream = httpx.ByteStream(body)
            if response.status_code in statuses:
                raise FailedResponse(response, retryable=retryable)
            return response

        try:
            return self.pipeline.call(attempt, f"{request.method} {request.url.path}")
        except FailedResponse as failed:
            return failed.response

    def close(self) -> None:
        """Close the inner transport."""
        self.transport.close()


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """The async form of :class:`ResilientTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        pipeline: Pipeline | None = None,
        failure_statuses: Collection[int] = FAILURE_STATUSES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.transport = transport or httpx.AsyncHTTPTransport()
        self.pipeline = pipeline or Pipeline.for_read("http")
        self.failure_statuses = frozenset(failure_statuses)
        self.max_body_bytes = max_body_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline."""
        retryable = _retryable(request)
        if retryable and not isinstance(request.stream, httpx.ByteStream):
            await request.aread()
        inner = self.transport
        statuses = self.failure_statuses
        pipeline, max_bytes = self.pipeline, self.max_body_bytes

        async def attempt(ctx: CallContext) -> httpx.Response:
            _with_timeout(request, ctx)
            try:
                response = await inner.handle_async_request(request)
                stream = response.stream
                assert isinstance(stream, httpx.AsyncByteStream)
                try:
                    chunks: list[bytes] = []
                    if "content-encoding" in response.headers:
                        decoder = _body_decoder(request, response, pipeline, max_bytes)
                        async for chunk in stream:
                            decoder.feed(chunk)
                            chunks.append(chunk)
                        decoder.finish()
                    else:
                        size = 0
                        async for chunk in stream:
                            size += len(chunk)
                            chunks.append(chunk)
                            if size > max_bytes:
                                _refuse_identity(request, response, pipeline, max_bytes, chunks)
                finally:
                    await stream.aclose()
            except httpx.TransportError as exc:
                raise _mark(exc, retryable) from None
            except ProviderError as exc:
                _mark_answered(exc, retryable)
                raise
            except asyncio.CancelledError as exc:
                # Cut by the per-try timeout after the request may have left: the timeout
                # keeps this mark, so a non-idempotent request is not sent again.
                if not retryable:
                    setattr(exc, NO_RETRY_ATTR, True)
                raise
            response.stream = httpx.ByteStream(b"".join(chunks))
            if response.status_code in statuses:
                raise FailedResponse(response, retryable=retryable)
            return response

        try:
            return await self.pipeline.acall(
                attempt, operation=f"{request.method} {request.url.path}"
            )
        except FailedResponse as failed:
            return failed.response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.transport.aclose()
