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
"""

from __future__ import annotations

import json
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


def _capped(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        request=response.request,
        extensions=response.extensions,
    )


def _too_big(provider: str, operation: str, status: int, max_bytes: int) -> ProviderError:
    return ProviderError(
        f"answer body exceeds the {max_bytes}-byte cap",
        provider=provider,
        operation=operation,
        http_status=status,
        request_sent=True,
    )


def _send(
    client: httpx.Client, request: httpx.Request, provider: str, operation: str, max_bytes: int
) -> httpx.Response:
    try:
        response = client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    try:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise _too_big(provider, operation, response.status_code, max_bytes)
            chunks.append(chunk)
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    finally:
        response.close()
    return _capped(response, chunks)


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
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise _too_big(provider, operation, response.status_code, max_bytes)
            chunks.append(chunk)
    except httpx.TransportError as exc:
        raise _transport_error(exc, provider, operation) from exc
    finally:
        await response.aclose()
    return _capped(response, chunks)


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
    :class:`OperationTimeout` with ``request_sent`` set; the flow raises the rest.
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
    """Drive a provider operation to completion with an async client."""
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
