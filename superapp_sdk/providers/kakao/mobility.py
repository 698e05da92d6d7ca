"""Kakao Mobility: directions for estimates, and a ride / rental API of our own.

**Estimates** follow Kakao Mobility Developers, Navi API "자동차 길찾기" (car directions,
https://developers.kakaomobility.com/docs/navi-api/directions/)::

    GET {mobility_base_url}/v1/directions?origin={lng},{lat}&destination={lng},{lat}
        &priority=RECOMMEND&summary=true
    Authorization: KakaoAK {REST_API_KEY}

The answer's ``routes[0].result_code`` is 0 on success, with ``summary.distance``
(metres), ``summary.duration`` (seconds) and ``summary.fare.taxi`` / ``summary.fare.toll``
(KRW); the estimate's fare is taxi fare plus tolls. Any other result code (1: no route,
101-107: no road near a point, points within 5 m, traffic incident) raises
:class:`~superapp_sdk._errors.Declined` with ``code`` set to it and ``result_msg`` as the
message. Request errors come back as ``{"code": -2, "msg": "..."}`` (-2 bad parameter ->
InvalidRequest, -401 -> Unauthorized, -10 quota -> RateLimited, -1/-7 -> ProviderError).

**Rides and rentals**: Kakao publishes no API to request a taxi or end a scooter rental,
so this adapter speaks a small REST API of our own, served by the operator's backend (or
the simulator in ``superapp_sdk.testing.kakao.mobility``) at ``ride_base_url`` (by
default ``mobility_base_url``), with the same ``Authorization: KakaoAK {REST_API_KEY}``
header and JSON bodies:

======================================  ==================================================
request                                 answer
======================================  ==================================================
``POST /v1/rides``                      ``201`` ride object (``200`` with
``Idempotency-Key: {key}``              ``Idempotent-Replayed: true`` when the key was
``{"rider", "origin": {"lat", "lng",    seen before with the same body; ``409``
"name"?}, "destination": {...},         ``idempotency_conflict`` with a different body)
"idempotency_key"}``
``GET /v1/rides/{ride_id}``             ``200`` ride object
``POST /v1/rides/{ride_id}/cancel``     ``200`` ride object, ``status: "canceled"``
``Idempotency-Key: {key}``              (canceling a canceled ride is a no-op; a finished
                                        one is ``409 ride_not_cancelable``)
``POST /v1/rentals/{rental_id}/end``    ``200`` receipt ``{"rental_id", "receipt_id",
``Idempotency-Key: {key}``              "ended_at", "location": {"lat", "lng"}, "fare"}``
``{"lat", "lng", "at"}``                (``409 rental_already_ended`` when ended under
                                        another key)
======================================  ==================================================

A ride object is ``{"id", "status", "rider", "origin", "destination", "driver": null |
{"name", "vehicle", "plate"}, "eta_s": int | null, "fare": null | {"amount", "currency"}}``
with ``status`` one of ``requested``, ``dispatched``, ``arrived``, ``in_progress``,
``completed``, ``canceled``, ``failed``. Times are epoch seconds. Errors are
``{"code": "no_drivers", "message": "..."}``: ``invalid_request`` -> InvalidRequest,
``idempotency_conflict`` -> IdempotencyConflict, any other 4xx code (``no_drivers``,
``out_of_service_area``, ``ride_not_found``, ``ride_not_cancelable``,
``rental_not_found``, ``rental_already_ended``) -> Declined; 5xx -> ProviderError. The
server keeps each ``Idempotency-Key`` (Stripe's model) so a retried request never books
a second ride or ends a rental twice.

**Hand-off**: :meth:`KakaoMobility.deep_links` builds, without I/O, a Kakao T link
(``kakaot://taxi?origin_lat=..&origin_lng=..&dest_lat=..&dest_lng=..``, the form Kakao T's
share links use; not a published API) and a Kakao Map route link (``kakaomap://route?sp=
lat,lng&ep=lat,lng&by=CAR``, from Kakao Map's URL-scheme guide), each with the Kakao Map
web route page (``https://map.kakao.com/link/from/{name},{lat},{lng}/to/...``) as fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import httpx

from superapp_sdk._errors import (
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    ProviderError,
    RateLimited,
    SuperAppError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.mobility import (
    MOBILITY_OPERATIONS,
    DeepLink,
    Driver,
    Estimate,
    Place,
    RentalReceipt,
    Ride,
    RideStatus,
)
from superapp_sdk.providers._http import (
    Flow,
    field,
    json_object,
    parse_retry_after,
    status_error,
)

__all__ = ["KakaoMobility"]

M = TypeVar("M")

_RIDE_STATUSES = {status.value: status for status in RideStatus}

# Kakao REST API response codes (the common table the Navi API shares).
_KAKAO_RETRYABLE = frozenset({-1, -7})
_KAKAO_UNAUTHORIZED = frozenset({-401, -3, -4, -5})
_KAKAO_QUOTA = -10


def _require(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_place(name: str, value: object) -> Place:
    if not isinstance(value, Place):
        raise ValueError(f"{name} must be a Place, got {value!r}")
    return value


def _require_url(name: str, value: str) -> str:
    _require(name, value)
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _xy(place: Place) -> str:
    # The Navi API takes longitude first ("x,y").
    return f"{place.lng},{place.lat}"


class KakaoMobility:
    """The Kakao Mobility provider: directions estimates, rides, rentals, app hand-off.

    Args:
        rest_api_key: the app's REST API key (sent as ``KakaoAK``).
        mobility_base_url: the Navi API's base URL.
        ride_base_url: base URL of the ride / rental API described in this module's
            docstring; ``mobility_base_url`` when not given.
        failure_domain: the failure domain Kakao Mobility shares with other providers.
        name: the provider's name in outcomes and health reports.
    """

    capability = Capability.MOBILITY
    operations = MOBILITY_OPERATIONS

    def __init__(
        self,
        *,
        rest_api_key: str,
        mobility_base_url: str = "https://apis-navi.kakaomobility.com",
        ride_base_url: str | None = None,
        failure_domain: str = "kakao",
        name: str = "kakao.mobility",
    ) -> None:
        _require("rest_api_key", rest_api_key)
        _require("failure_domain", failure_domain)
        _require("name", name)
        self._rest_api_key = rest_api_key
        self.mobility_base_url = _require_url("mobility_base_url", mobility_base_url)
        self.ride_base_url = (
            self.mobility_base_url
            if ride_base_url is None
            else _require_url("ride_base_url", ride_base_url)
        )
        self.failure_domain = failure_domain
        self.name = name

    def __repr__(self) -> str:
        return (
            f"KakaoMobility(name={self.name!r}, mobility_base_url={self.mobility_base_url!r}, "
            f"ride_base_url={self.ride_base_url!r})"
        )

    # -- operations --------------------------------------------------------------------

    def estimate(self, *, origin: Place, destination: Place) -> Flow[Estimate]:
        """Distance, duration and taxi fare (plus tolls) by car, from live traffic.

        Raises:
            Declined: Kakao found no route (``code`` is its ``result_code``).
        """
        _require_place("origin", origin)
        _require_place("destination", destination)
        return self._estimate(origin, destination)

    def request_ride(
        self, *, rider: str, origin: Place, destination: Place, idempotency_key: str
    ) -> Flow[Ride]:
        """Request a taxi; the same ``idempotency_key`` always answers the same ride.

        Raises:
            Declined: no driver, outside the service area.
            IdempotencyConflict: the key was used before for a different request.
        """
        _require("rider", rider)
        _require_place("origin", origin)
        _require_place("destination", destination)
        _require("idempotency_key", idempotency_key)
        body = {
            "rider": rider,
            "origin": _place_json(origin),
            "destination": _place_json(destination),
            "idempotency_key": idempotency_key,
        }
        request = self._ride_request("POST", "/v1/rides", body, idempotency_key)
        return self._ride_flow(request, "mobility.request_ride")

    def ride(self, ride_id: str) -> Flow[Ride]:
        """A ride's current state.

        Raises:
            Declined: no such ride (``ride_not_found``).
        """
        _require("ride_id", ride_id)
        request = self._ride_request("GET", f"/v1/rides/{quote(ride_id, safe='')}")
        return self._ride_flow(request, "mobility.ride")

    def cancel_ride(self, ride_id: str, *, idempotency_key: str) -> Flow[Ride]:
        """Cancel a ride; canceling a canceled ride answers it unchanged.

        Raises:
            Declined: no such ride, or it already finished (``ride_not_cancelable``).
        """
        _require("ride_id", ride_id)
        _require("idempotency_key", idempotency_key)
        path = f"/v1/rides/{quote(ride_id, safe='')}/cancel"
        request = self._ride_request("POST", path, {}, idempotency_key)
        return self._ride_flow(request, "mobility.cancel_ride")

    def end_rental(
        self, *, rental_id: str, location: Place, at: float, idempotency_key: str
    ) -> Flow[RentalReceipt]:
        """End a rental at ``location`` at epoch seconds ``at``; the operator's receipt.

        Raises:
            Declined: no such rental, or it was ended under another key.
        """
        _require("rental_id", rental_id)
        _require_place("location", location)
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError(f"at must be epoch seconds, got {at!r}")
        if at < 0:
            raise ValueError(f"at must be >= 0, got {at!r}")
        _require("idempotency_key", idempotency_key)
        body = {"lat": location.lat, "lng": location.lng, "at": float(at)}
        path = f"/v1/rentals/{quote(rental_id, safe='')}/end"
        request = self._ride_request("POST", path, body, idempotency_key)
        return self._end_rental(request)

    def deep_links(self, *, origin: Place, destination: Place) -> list[DeepLink]:
        """Links handing the trip to Kakao T and Kakao Map, with a web fallback (no I/O)."""
        _require_place("origin", origin)
        _require_place("destination", destination)
        web = (
            "https://map.kakao.com/link/from/"
            f"{_web_point(origin, 'origin')}/to/{_web_point(destination, 'destination')}"
        )
        taxi = urlencode(
            {
                "origin_lat": origin.lat,
                "origin_lng": origin.lng,
                "dest_lat": destination.lat,
                "dest_lng": destination.lng,
            }
        )
        route = urlencode(
            {
                "sp": f"{origin.lat},{origin.lng}",
                "ep": f"{destination.lat},{destination.lng}",
                "by": "CAR",
            },
            safe=",",
        )
        return [
            DeepLink(app="kakaot", url=f"kakaot://taxi?{taxi}", fallback_url=web),
            DeepLink(app="kakaomap", url=f"kakaomap://route?{route}", fallback_url=web),
        ]

    # -- flows -------------------------------------------------------------------------

    def _estimate(self, origin: Place, destination: Place) -> Flow[Estimate]:
        operation = "mobility.estimate"
        params = {
            "origin": _xy(origin),
            "destination": _xy(destination),
            "priority": "RECOMMEND",
            "summary": "true",
        }
        response = yield httpx.Request(
            "GET",
            f"{self.mobility_base_url}/v1/directions",
            params=params,
            headers=self._auth(),
        )
        if not 200 <= response.status_code < 300:
            raise _kakao_error(response, provider=self.name, operation=operation)
        data = json_object(response, provider=self.name, operation=operation)
        routes = self._get(data, "routes", list, operation)
        if not routes or not isinstance(routes[0], dict):
            raise self._bad("field 'routes' holds no route object", operation)
        route: dict[str, Any] = routes[0]
        code = self._get(route, "result_code", int, operation)
        if code != 0:
            message = route.get("result_msg")
            raise Declined(
                message if isinstance(message, str) and message else f"no route ({code})",
                provider=self.name,
                operation=operation,
                http_status=response.status_code,
                code=str(code),
                request_sent=True,
            )
        summary = self._get(route, "summary", dict, operation)
        distance = self._count(summary, "distance", operation)
        duration = self._count(summary, "duration", operation)
        fare = None
        if summary.get("fare") is not None:
            fares = self._get(summary, "fare", dict, operation)
            taxi = self._count(fares, "taxi", operation)
            toll = self._count(fares, "toll", operation) if fares.get("toll") is not None else 0
            fare = Money(taxi + toll, "KRW")
        return self._model(
            operation,
            lambda: Estimate(
                origin=origin,
                destination=destination,
                distance_m=distance,
                duration_s=duration,
                fare=fare,
                provider=self.name,
                live=True,
            ),
        )

    def _ride_flow(self, request: httpx.Request, operation: str) -> Flow[Ride]:
        response = yield request
        data = self._read(response, operation)
        return self._ride(data, operation)

    def _end_rental(self, request: httpx.Request) -> Flow[RentalReceipt]:
        operation = "mobility.end_rental"
        response = yield request
        data = self._read(response, operation)
        ended_at: float = self._get(data, "ended_at", (int, float), operation)
        location = self._place(data, "location", operation)
        fare = self._money(data, "fare", operation)
        return self._model(
            operation,
            lambda: RentalReceipt(
                rental_id=self._text(data, "rental_id", operation),
                provider=self.name,
                ended_at=float(ended_at),
                location=location,
                fare=fare,
                receipt_id=self._text(data, "receipt_id", operation),
                signature=None,
                reconciled=True,
            ),
        )

    # -- requests and answers ----------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"KakaoAK {self._rest_api_key}"}

    def _ride_request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Request:
        headers = self._auth()
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return httpx.Request(method, self.ride_base_url + path, json=body, headers=headers)

    def _read(self, response: httpx.Response, operation: str) -> dict[str, Any]:
        if 200 <= response.status_code < 300:
            return json_object(response, provider=self.name, operation=operation)
        raise _ride_error(response, provider=self.name, operation=operation)

    def _ride(self, data: dict[str, Any], operation: str) -> Ride:
        raw_status = self._text(data, "status", operation)
        status = _RIDE_STATUSES.get(raw_status)
        if status is None:
            raise self._bad(f"unknown ride status {raw_status!r}", operation)
        driver = None
        if data.get("driver") is not None:
            info = self._get(data, "driver", dict, operation)
            driver = self._model(
                operation,
                lambda: Driver(
                    name=self._text(info, "name", operation),
                    vehicle=self._get(info, "vehicle", str, operation, optional=True),
                    plate=self._get(info, "plate", str, operation, optional=True),
                ),
            )
        eta = self._count(data, "eta_s", operation) if data.get("eta_s") is not None else None
        origin = self._place(data, "origin", operation)
        destination = self._place(data, "destination", operation)
        fare = self._money(data, "fare", operation)
        return self._model(
            operation,
            lambda: Ride(
                ride_id=self._text(data, "id", operation),
                provider=self.name,
                status=status,
                rider=self._text(data, "rider", operation),
                origin=origin,
                destination=destination,
                driver=driver,
                eta_s=eta,
                fare=fare,
            ),
        )

    def _place(self, data: dict[str, Any], name: str, operation: str) -> Place:
        raw = self._get(data, name, dict, operation)
        lat: float = self._get(raw, "lat", (int, float), operation)
        lng: float = self._get(raw, "lng", (int, float), operation)
        label = self._get(raw, "name", str, operation, optional=True)
        return self._model(operation, lambda: Place(lat, lng, label or None))

    def _money(self, data: dict[str, Any], name: str, operation: str) -> Money | None:
        if data.get(name) is None:
            return None
        raw = self._get(data, name, dict, operation)
        amount = self._get(raw, "amount", int, operation)
        currency = self._get(raw, "currency", str, operation)
        return self._model(operation, lambda: Money(amount, currency))

    def _count(self, data: dict[str, Any], name: str, operation: str) -> int:
        value = self._get(data, name, int, operation)
        if value < 0:
            raise self._bad(f"field {name!r} is negative ({value})", operation)
        return value

    def _text(self, data: dict[str, Any], name: str, operation: str) -> str:
        value = self._get(data, name, str, operation)
        if not value:
            raise self._bad(f"field {name!r} is empty", operation)
        return value

    def _get(
        self,
        data: dict[str, Any],
        name: str,
        kind: type[M] | tuple[type, ...],
        operation: str,
        *,
        optional: bool = False,
    ) -> M:
        return field(data, name, kind, provider=self.name, operation=operation, optional=optional)

    def _bad(self, message: str, operation: str) -> ProviderError:
        return ProviderError(message, provider=self.name, operation=operation, request_sent=True)

    def _model(self, operation: str, build: Callable[[], M]) -> M:
        try:
            return build()
        except ValueError as exc:
            raise self._bad(f"answer does not make a valid model: {exc}", operation) from exc


def _place_json(place: Place) -> dict[str, Any]:
    body: dict[str, Any] = {"lat": place.lat, "lng": place.lng}
    if place.name is not None:
        body["name"] = place.name
    return body


def _web_point(place: Place, default: str) -> str:
    return f"{quote(place.name or default, safe='')},{place.lat},{place.lng}"


def _error_body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        return json_object(response, provider="", operation="")
    except ProviderError:
        return None


def _kakao_error(response: httpx.Response, *, provider: str, operation: str) -> SuperAppError:
    """The SDK error for a non-2xx Navi API answer (``{"code": -2, "msg": "..."}``)."""
    body = _error_body(response)
    code = body.get("code") if body else None
    if body is None or isinstance(code, bool) or not isinstance(code, int):
        return status_error(response, provider=provider, operation=operation)
    message = body.get("msg")
    text = message if isinstance(message, str) and message else f"Kakao error {code}"
    common: dict[str, Any] = {
        "provider": provider,
        "operation": operation,
        "http_status": response.status_code,
        "code": str(code),
        "request_id": response.headers.get("x-request-id"),
        "request_sent": True,
    }
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if response.status_code == 429 or code == _KAKAO_QUOTA:
        return RateLimited(text, retry_after=retry_after, **common)
    if code in _KAKAO_RETRYABLE or response.status_code >= 500:
        return ProviderError(text, retry_after=retry_after, **common)
    if code in _KAKAO_UNAUTHORIZED or response.status_code in (401, 403):
        return Unauthorized(text, **common)
    return InvalidRequest(text, **common)


def _ride_error(response: httpx.Response, *, provider: str, operation: str) -> SuperAppError:
    """The SDK error for a non-2xx answer of the ride / rental API."""
    body = _error_body(response)
    code = body.get("code") if body else None
    status = response.status_code
    if body is None or not isinstance(code, str) or not code or not 400 <= status < 500:
        return status_error(response, provider=provider, operation=operation)
    message = body.get("message")
    text = message if isinstance(message, str) and message else code
    if code == "idempotency_conflict":
        return IdempotencyConflict(
            text,
            provider=provider,
            operation=operation,
            http_status=status,
            code=code,
            request_id=response.headers.get("x-request-id"),
            request_sent=True,
        )
    declined = code != "invalid_request"
    return status_error(
        response, provider=provider, operation=operation, message=text, code=code, declined=declined
    )
