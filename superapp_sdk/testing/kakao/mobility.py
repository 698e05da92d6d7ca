"""A simulated Kakao Mobility for tests and drills: directions, rides and rentals.

Served under the ``/mobility`` prefix of the simulated Kakao data center:

- ``GET /mobility/v1/directions?origin=lng,lat&destination=lng,lat`` as the Kakao
  Mobility Navi API answers it (``Authorization: KakaoAK {key}``): the distance is the
  great-circle (haversine) distance times a detour factor, the duration that distance at
  a city speed, the taxi fare Seoul's meter tariff. Points outside the service area get
  ``result_code`` 102/103, points within 5 m of each other 104, and
  :attr:`MobilityState.no_route` forces 1 ("no route"); malformed coordinates get HTTP
  400 ``{"code": -2, "msg": "..."}``.
- The ride and rental API of our own that ``superapp_sdk.providers.kakao.mobility``
  documents (``/v1/rides``, ``/v1/rides/{id}``, ``/v1/rides/{id}/cancel``,
  ``/v1/rentals/{id}/end``), deduplicating writes by ``Idempotency-Key`` the way Stripe
  does: a replay with the same body answers the stored response with
  ``Idempotent-Replayed: true``; the same key with a different body is a 409
  ``idempotency_conflict``.

Test helpers on :class:`MobilityState`: :meth:`~MobilityState.start_rental`,
:meth:`~MobilityState.dispatch`, :meth:`~MobilityState.set_status`, the counters
:attr:`~MobilityState.rides` / :meth:`~MobilityState.rentals_ended`, and
:meth:`~MobilityState.effects`, every ride booked or canceled and rental ended with the key
it was executed under.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.testing.kakao._asgi import Request, Response, Route, json_response
from superapp_sdk.testing.kakao._effects import Effect, EffectLog

__all__ = ["MobilityState", "TaxiTariff", "haversine_m", "routes"]

_EARTH_RADIUS_M = 6_371_008.8
_FINISHED = ("completed", "canceled", "failed")
_RIDE_STATUSES = ("requested", "dispatched", "arrived", "in_progress", *_FINISHED)


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(a))


@dataclass(frozen=True, slots=True)
class TaxiTariff:
    """A taxi meter: a base fare covering some distance, then a step per distance.

    The defaults are Seoul's mid-size taxi tariff of February 2023 (4,800 KRW for the
    first 1.6 km, then 100 KRW per 131 m).
    """

    base_fare: int = 4_800
    base_distance_m: int = 1_600
    step_fare: int = 100
    step_distance_m: int = 131

    def __post_init__(self) -> None:
        for name in ("base_fare", "base_distance_m", "step_fare"):
            if getattr(self, name) < 0:
                raise ValueError(f"TaxiTariff.{name} must be >= 0, got {getattr(self, name)}")
        if self.step_distance_m <= 0:
            raise ValueError(f"TaxiTariff.step_distance_m must be > 0, got {self.step_distance_m}")

    def fare(self, distance_m: int) -> int:
        """The metered fare for ``distance_m``."""
        extra = max(0, distance_m - self.base_distance_m)
        return self.base_fare + math.ceil(extra / self.step_distance_m) * self.step_fare


@dataclass(slots=True)
class _Ride:
    ride_id: str
    rider: str
    origin: dict[str, Any]
    destination: dict[str, Any]
    fare: int
    status: str = "requested"
    driver: dict[str, str] | None = None
    eta_s: int | None = None

    def json(self) -> dict[str, Any]:
        return {
            "id": self.ride_id,
            "status": self.status,
            "rider": self.rider,
            "origin": self.origin,
            "destination": self.destination,
            "driver": self.driver,
            "eta_s": self.eta_s,
            "fare": {"amount": self.fare, "currency": "KRW"},
        }


@dataclass(slots=True)
class _Rental:
    rental_id: str
    started_at: float
    receipt: dict[str, Any] | None = None


@dataclass(slots=True)
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]


class _Failure(Exception):
    def __init__(self, status: int, code: str, message: str, *, stored: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.stored = stored


class MobilityState:
    """The simulated Kakao Mobility's data and knobs. Thread-safe.

    Args:
        rest_api_key: the key ``Authorization: KakaoAK ...`` must carry.
        clock: time source for rental ends.
        speed_mps: average driving speed for durations (8 m/s is about 29 km/h).
        detour: road distance over great-circle distance.
        tariff: the taxi meter for fares.
        service_area: ``(min_lat, min_lng, max_lat, max_lng)`` where roads exist
            (default: South Korea's bounding box).
        unlock_fare: rental fare charged on every rental.
        per_minute_fare: rental fare per started minute.
    """

    def __init__(
        self,
        *,
        rest_api_key: str = "sim-kakao-rest-key",
        clock: Clock | None = None,
        speed_mps: float = 8.0,
        detour: float = 1.3,
        tariff: TaxiTariff | None = None,
        service_area: tuple[float, float, float, float] = (33.0, 124.5, 38.7, 131.0),
        unlock_fare: int = 1_000,
        per_minute_fare: int = 150,
    ) -> None:
        if speed_mps <= 0:
            raise ValueError(f"speed_mps must be > 0, got {speed_mps}")
        if detour < 1:
            raise ValueError(f"detour must be >= 1, got {detour}")
        self.rest_api_key = rest_api_key
        self.clock: Clock = clock or SystemClock()
        self.speed_mps = speed_mps
        self.detour = detour
        self.tariff = tariff or TaxiTariff()
        self.service_area = service_area
        self.unlock_fare = unlock_fare
        self.per_minute_fare = per_minute_fare
        #: When True, directions answer ``result_code`` 1 (no route found).
        self.no_route = False
        #: When False, ride requests are refused with ``no_drivers``.
        self.drivers_available = True
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rides: dict[str, _Ride] = {}
        self._rentals: dict[str, _Rental] = {}
        self._keys: dict[tuple[str, str], _Stored] = {}
        self._effects = EffectLog()

    # -- test helpers ------------------------------------------------------------------

    def start_rental(self, rental_id: str, *, started_at: float | None = None) -> None:
        """Open a rental that :meth:`routes`' end endpoint can close."""
        with self._lock:
            at = self.clock.time() if started_at is None else started_at
            self._rentals[rental_id] = _Rental(rental_id, at)

    def dispatch(
        self,
        ride_id: str,
        *,
        name: str = "Kim Driver",
        vehicle: str = "Sonata",
        plate: str = "12가3456",
        eta_s: int = 240,
    ) -> None:
        """A driver accepts ``ride_id``."""
        with self._lock:
            ride = self._rides[ride_id]
            ride.status = "dispatched"
            ride.driver = {"name": name, "vehicle": vehicle, "plate": plate}
            ride.eta_s = eta_s

    def set_status(self, ride_id: str, status: str) -> None:
        """Move ``ride_id`` to ``status`` (one of the ride API's statuses)."""
        if status not in _RIDE_STATUSES:
            raise ValueError(f"status must be one of {_RIDE_STATUSES}, got {status!r}")
        with self._lock:
            ride = self._rides[ride_id]
            ride.status = status
            if status != "dispatched":
                ride.eta_s = None

    @property
    def rides(self) -> dict[str, dict[str, Any]]:
        """Every ride created, by id, as the API shows it."""
        with self._lock:
            return {ride_id: ride.json() for ride_id, ride in self._rides.items()}

    def rentals_ended(self) -> dict[str, dict[str, Any]]:
        """The receipt of every ended rental, by rental id."""
        with self._lock:
            return {r.rental_id: dict(r.receipt) for r in self._rentals.values() if r.receipt}

    def effects(
        self, kind: str | None = None, *, order_id: str | None = None, key: str | None = None
    ) -> tuple[Effect, ...]:
        """Every ride booked (``"mobility.request_ride"``: ``ref`` the ride id, ``rider``),
        ride canceled (``"mobility.cancel_ride"``) and rental ended
        (``"mobility.end_rental"``: ``ref`` the rental id, ``amount`` the fare), each with
        the ``Idempotency-Key`` it executed under, oldest first; only those of ``kind``,
        ``order_id`` and ``key`` when given. Replays of a stored key are not listed.
        """
        return self._effects.effects(kind, order_id=order_id, key=key)

    # -- directions --------------------------------------------------------------------

    def directions(self, request: Request) -> Response:
        """``GET /v1/directions``, as the Kakao Mobility Navi API answers it."""
        if request.headers.get("authorization") != f"KakaoAK {self.rest_api_key}":
            return json_response({"code": -401, "msg": "invalid app key"}, status=401)
        try:
            origin = _xy(request.query, "origin")
            destination = _xy(request.query, "destination")
        except ValueError as exc:
            return json_response({"code": -2, "msg": str(exc)}, status=400)
        with self._lock:
            trans_id = hashlib.sha256(f"trans:{next(self._ids)}".encode()).hexdigest()[:32]
        code, message = self._route_result(origin, destination)
        route: dict[str, Any] = {"result_code": code, "result_msg": message}
        if code == 0:
            distance = round(haversine_m(*origin, *destination) * self.detour)
            duration = round(distance / self.speed_mps)
            (lat1, lng1), (lat2, lng2) = origin, destination
            bound = {
                "min_x": min(lng1, lng2),
                "min_y": min(lat1, lat2),
                "max_x": max(lng1, lng2),
                "max_y": max(lat1, lat2),
            }
            route["summary"] = {
                "origin": {"name": "", "x": lng1, "y": lat1},
                "destination": {"name": "", "x": lng2, "y": lat2},
                "waypoints": [],
                "priority": request.query.get("priority", "RECOMMEND"),
                "bound": bound,
                "fare": {"taxi": self.tariff.fare(distance), "toll": 0},
                "distance": distance,
                "duration": duration,
            }
            if request.query.get("summary") != "true":
                route["sections"] = [
                    {
                        "distance": distance,
                        "duration": duration,
                        "bound": bound,
                        "roads": [],
                        "guides": [],
                    }
                ]
        return json_response({"trans_id": trans_id, "routes": [route]})

    def _route_result(
        self, origin: tuple[float, float], destination: tuple[float, float]
    ) -> tuple[int, str]:
        # Result codes and messages of the Navi API's directions document.
        if not self._in_area(origin):
            return 102, "시작 지점 주변의 도로를 탐색할 수 없음"
        if not self._in_area(destination):
            return 103, "도착 지점 주변의 도로를 탐색할 수 없음"
        if haversine_m(*origin, *destination) <= 5:
            return 104, "출발지와 도착지가 5 m 이내로 설정된 경우 경로를 탐색할 수 없음"
        if self.no_route:
            return 1, "길찾기 결과를 찾을 수 없음"
        return 0, "길찾기 성공"

    def _in_area(self, point: tuple[float, float]) -> bool:
        min_lat, min_lng, max_lat, max_lng = self.service_area
        return min_lat <= point[0] <= max_lat and min_lng <= point[1] <= max_lng

    # -- ride and rental API -----------------------------------------------------------

    def request_ride(self, request: Request) -> Response:
        """``POST /v1/rides``."""
        return self._write(request, "rides", self._new_ride)

    def get_ride(self, request: Request) -> Response:
        """``GET /v1/rides/{ride_id}``."""
        if not self._authorized(request):
            return _error(401, "unauthorized", "invalid app key")
        with self._lock:
            ride = self._rides.get(request.params["ride_id"])
            if ride is None:
                return _error(404, "ride_not_found", "no such ride")
            return json_response(ride.json())

    def cancel_ride(self, request: Request) -> Response:
        """``POST /v1/rides/{ride_id}/cancel``."""
        return self._write(request, f"cancel:{request.params['ride_id']}", self._cancel)

    def end_rental(self, request: Request) -> Response:
        """``POST /v1/rentals/{rental_id}/end``."""
        return self._write(request, f"end:{request.params['rental_id']}", self._end)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"KakaoAK {self.rest_api_key}"

    def _write(
        self,
        request: Request,
        scope: str,
        perform: Callable[[Request, dict[str, Any]], tuple[int, dict[str, Any]]],
    ) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "invalid app key")
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "invalid_request", "the Idempotency-Key header is required")
        try:
            body = request.json()
        except ValueError:
            return _error(400, "invalid_request", "the body is not JSON")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "the body must be a JSON object")
        fingerprint = hashlib.sha256(
            json.dumps([request.path, body], sort_keys=True).encode()
        ).hexdigest()
        with self._lock:
            stored = self._keys.get((scope, key))
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    return _error(
                        409,
                        "idempotency_conflict",
                        "this Idempotency-Key was used with a different request",
                    )
                return json_response(
                    stored.body, stored.status, headers={"Idempotent-Replayed": "true"}
                )
            try:
                status, answer = perform(request, body)
            except _Failure as failure:
                answer = {"code": failure.code, "message": failure.message}
                # Like Stripe, a request that started executing keeps its result under
                # the key; a malformed one does not.
                if failure.stored:
                    self._keys[(scope, key)] = _Stored(fingerprint, failure.status, answer)
                return json_response(answer, failure.status)
            self._keys[(scope, key)] = _Stored(fingerprint, status, answer)
            return json_response(answer, status)

    def _new_ride(self, request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        rider = body.get("rider")
        if not isinstance(rider, str) or not rider:
            raise _Failure(400, "invalid_request", "rider must be a non-empty string")
        origin = _place(body.get("origin"), "origin")
        destination = _place(body.get("destination"), "destination")
        a, b = (origin["lat"], origin["lng"]), (destination["lat"], destination["lng"])
        if not (self._in_area(a) and self._in_area(b)):
            raise _Failure(422, "out_of_service_area", "outside the service area", stored=True)
        if not self.drivers_available:
            raise _Failure(422, "no_drivers", "no driver is available nearby", stored=True)
        distance = round(haversine_m(*a, *b) * self.detour)
        ride = _Ride(
            ride_id=f"R{next(self._ids):012d}",
            rider=rider,
            origin=origin,
            destination=destination,
            fare=self.tariff.fare(distance),
        )
        self._rides[ride.ride_id] = ride
        self._effects.record(
            Effect(
                "mobility.request_ride",
                self.clock.time(),
                key=request.headers.get("idempotency-key"),
                ref=ride.ride_id,
                rider=rider,
            )
        )
        return 201, ride.json()

    def _cancel(self, request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ride = self._rides.get(request.params["ride_id"])
        if ride is None:
            raise _Failure(404, "ride_not_found", "no such ride")
        if ride.status in ("completed", "failed"):
            raise _Failure(409, "ride_not_cancelable", f"the ride is {ride.status}", stored=True)
        if ride.status != "canceled":
            self._effects.record(
                Effect(
                    "mobility.cancel_ride",
                    self.clock.time(),
                    key=request.headers.get("idempotency-key"),
                    ref=ride.ride_id,
                )
            )
        ride.status = "canceled"
        ride.eta_s = None
        return 200, ride.json()

    def _end(self, request: Request, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        rental = self._rentals.get(request.params["rental_id"])
        if rental is None:
            raise _Failure(404, "rental_not_found", "no such rental")
        location = _place(body, "location")
        at = body.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise _Failure(400, "invalid_request", "at must be epoch seconds")
        if at < rental.started_at:
            raise _Failure(400, "invalid_request", "at is before the rental started")
        if rental.receipt is not None:
            raise _Failure(409, "rental_already_ended", "the rental was already ended", stored=True)
        minutes = math.ceil((at - rental.started_at) / 60)
        fare = self.unlock_fare + minutes * self.per_minute_fare
        rental.receipt = {
            "rental_id": rental.rental_id,
            "receipt_id": f"RC{next(self._ids):012d}",
            "ended_at": float(at),
            "location": location,
            "fare": {"amount": fare, "currency": "KRW"},
        }
        self._effects.record(
            Effect(
                "mobility.end_rental",
                self.clock.time(),
                key=request.headers.get("idempotency-key"),
                ref=rental.rental_id,
                amount=fare,
            )
        )
        return 200, dict(rental.receipt)


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"code": code, "message": message}, status)


def _xy(query: dict[str, str], name: str) -> tuple[float, float]:
    """``(lat, lng)`` from a Navi API point, ``x,y[,name=...]`` (longitude first)."""
    raw = query.get(name)
    if not raw:
        raise ValueError(f"{name} is required")
    parts = raw.split(",")
    try:
        lng, lat = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{name} must be 'x,y' (longitude,latitude), got {raw!r}") from exc
    if not (math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        raise ValueError(f"{name} is out of range: {raw!r}")
    return lat, lng


def _place(raw: object, label: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Failure(400, "invalid_request", f"{label} must be an object with lat and lng")
    place: dict[str, Any] = {}
    for axis, limit in (("lat", 90), ("lng", 180)):
        value = raw.get(axis)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not -limit <= value <= limit
        ):
            raise _Failure(400, "invalid_request", f"{label}.{axis} must be a coordinate")
        place[axis] = float(value)
    if isinstance(raw.get("name"), str) and raw["name"]:
        place["name"] = raw["name"]
    return place


def routes(state: MobilityState) -> list[Route]:
    """The simulated Kakao Mobility endpoints, for ``App(... + mobility.routes(state))``."""
    return [
        Route("GET", "/mobility/v1/directions", state.directions, "mobility"),
        Route("POST", "/mobility/v1/rides", state.request_ride, "mobility", write=True),
        Route("GET", "/mobility/v1/rides/{ride_id}", state.get_ride, "mobility"),
        Route(
            "POST",
            "/mobility/v1/rides/{ride_id}/cancel",
            state.cancel_ride,
            "mobility",
            write=True,
        ),
        Route(
            "POST",
            "/mobility/v1/rentals/{rental_id}/end",
            state.end_rental,
            "mobility",
            write=True,
        ),
    ]
