"""Mobility models and the Kakao Mobility adapter flows, driven with plain responses."""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from superapp_sdk._errors import (
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    ProviderError,
    RateLimited,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.mobility import (
    MOBILITY_OPERATIONS,
    DeepLink,
    Driver,
    Estimate,
    MobilityProvider,
    Place,
    RentalReceipt,
    Ride,
    RideStatus,
)
from superapp_sdk.providers.kakao.mobility import KakaoMobility

T = TypeVar("T")

KEY = "rest-api-key-0123"
NAVI = "https://apis-navi.kakaomobility.com"
PANGYO = Place(37.402056, 127.108212, "Pangyo")
GANGNAM = Place(37.4979, 127.0276, "Gangnam")


def drive(
    flow: Generator[httpx.Request, httpx.Response, T], *responses: httpx.Response
) -> tuple[T, list[httpx.Request]]:
    """Run ``flow`` answering its requests with ``responses`` in order."""
    sent = [next(flow)]
    for response in responses:
        try:
            sent.append(flow.send(response))
        except StopIteration as stop:
            return stop.value, sent
    raise AssertionError(f"the flow sent {len(sent)} requests, more than the answers given")


def ok(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def directions(**summary_changes: object) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "origin": {"name": "", "x": 127.108212, "y": 37.402056},
        "destination": {"name": "", "x": 127.0276, "y": 37.4979},
        "waypoints": [],
        "priority": "RECOMMEND",
        "fare": {"taxi": 16300, "toll": 1200},
        "distance": 16659,
        "duration": 2082,
    }
    summary.update(summary_changes)
    return {
        "trans_id": "0183c3f1",
        "routes": [{"result_code": 0, "result_msg": "길찾기 성공", "summary": summary}],
    }


def ride_json(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "R1",
        "status": "dispatched",
        "rider": "user-1",
        "origin": {"lat": 37.402056, "lng": 127.108212, "name": "Pangyo"},
        "destination": {"lat": 37.4979, "lng": 127.0276},
        "driver": {"name": "Kim", "vehicle": "Sonata", "plate": "12가3456"},
        "eta_s": 240,
        "fare": {"amount": 16300, "currency": "KRW"},
    }
    data.update(changes)
    return data


def receipt_json(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "rental_id": "scooter-9",
        "receipt_id": "RC1",
        "ended_at": 1_700_000_600.0,
        "location": {"lat": 37.4979, "lng": 127.0276},
        "fare": {"amount": 2500, "currency": "KRW"},
    }
    data.update(changes)
    return data


def problem(status: int, code: str, message: str = "no") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message})


@pytest.fixture
def mobility() -> KakaoMobility:
    return KakaoMobility(rest_api_key=KEY)


# -- models ------------------------------------------------------------------------------


def test_place_keeps_latitude_first() -> None:
    """Place takes latitude, then longitude, then an optional name."""
    place = Place(37.5, 127.0, "Seoul")
    assert (place.lat, place.lng, place.name) == (37.5, 127.0, "Seoul")


def test_place_turns_integer_degrees_into_floats() -> None:
    """Integer coordinates are stored as floats."""
    place = Place(37, 127)
    assert isinstance(place.lat, float)
    assert isinstance(place.lng, float)


@pytest.mark.parametrize(
    ("lat", "lng", "axis"),
    [
        (90.5, 0.0, "lat"),
        (-91.0, 0.0, "lat"),
        (0.0, 180.01, "lng"),
        (0.0, -181.0, "lng"),
        (math.nan, 0.0, "lat"),
        (0.0, math.inf, "lng"),
        (True, 0.0, "lat"),
        ("37.5", 127.0, "lat"),
    ],
)
def test_place_rejects_coordinates_out_of_range(lat: Any, lng: Any, axis: str) -> None:
    """Coordinates outside WGS 84 ranges, NaN, infinities, bools and strings are refused."""
    with pytest.raises(ValueError, match=rf"Place\.{axis}"):
        Place(lat, lng)


def test_place_accepts_the_range_limits() -> None:
    """The poles and the antimeridian are valid places."""
    assert Place(-90, 180).lat == -90.0


def test_place_rejects_an_empty_name() -> None:
    """A name is None or a real string."""
    with pytest.raises(ValueError, match="name"):
        Place(37.5, 127.0, "")


def test_estimate_rejects_a_negative_distance() -> None:
    """Distances are metres >= 0."""
    with pytest.raises(ValueError, match="distance_m"):
        Estimate(PANGYO, GANGNAM, -1, 10, None, "kakao.mobility", True)


def test_estimate_rejects_a_non_bool_live_flag() -> None:
    """live says live or timetable, nothing else."""
    with pytest.raises(ValueError, match="live"):
        Estimate(PANGYO, GANGNAM, 1, 10, None, "gtfs", 1)  # type: ignore[arg-type]


def test_timetable_estimate_keeps_its_scheduled_departure() -> None:
    """A timetable estimate carries the scheduled departure."""
    estimate = Estimate(PANGYO, GANGNAM, 1, 10, None, "gtfs", False, 1_700_000_000.0)
    assert (estimate.live, estimate.scheduled_departure) == (False, 1_700_000_000.0)


def test_ride_rejects_a_raw_status() -> None:
    """A ride's status is a RideStatus."""
    with pytest.raises(ValueError, match="status"):
        Ride("R1", "p", "requested", "u", PANGYO, GANGNAM)  # type: ignore[arg-type]


def test_ride_rejects_a_negative_eta() -> None:
    """ETA is seconds >= 0."""
    with pytest.raises(ValueError, match="eta_s"):
        Ride("R1", "p", RideStatus.DISPATCHED, "u", PANGYO, GANGNAM, eta_s=-5)


def test_rental_receipt_defaults_to_a_reconciled_operator_receipt() -> None:
    """An operator's receipt has no local signature and is reconciled."""
    receipt = RentalReceipt("s1", "p", 1.0, PANGYO, None, "rc1")
    assert (receipt.signature, receipt.reconciled) == (None, True)


def test_rental_receipt_rejects_a_location_that_is_not_a_place() -> None:
    """The end location must be a Place."""
    with pytest.raises(ValueError, match="location"):
        RentalReceipt("s1", "p", 1.0, (37.5, 127.0), None, "rc1")  # type: ignore[arg-type]


def test_deep_link_rejects_an_empty_url() -> None:
    """A deep link needs a URL."""
    with pytest.raises(ValueError, match="url"):
        DeepLink("kakaot", "")


def test_driver_rejects_an_empty_name() -> None:
    """A driver is named."""
    with pytest.raises(ValueError, match=r"Driver\.name"):
        Driver("")


# -- the adapter itself ------------------------------------------------------------------


def test_kakao_mobility_satisfies_the_protocol(mobility: KakaoMobility) -> None:
    """KakaoMobility is a MobilityProvider in the kakao domain."""
    assert isinstance(mobility, MobilityProvider)
    assert mobility.capability is Capability.MOBILITY
    assert mobility.operations == MOBILITY_OPERATIONS
    assert (mobility.name, mobility.failure_domain) == ("kakao.mobility", "kakao")


def test_repr_hides_the_rest_api_key(mobility: KakaoMobility) -> None:
    """The REST API key never appears in repr."""
    assert KEY not in repr(mobility)
    assert NAVI in repr(mobility)


def test_ride_api_defaults_to_the_mobility_base_url(mobility: KakaoMobility) -> None:
    """Without ride_base_url, the ride API lives next to the Navi API."""
    assert mobility.ride_base_url == NAVI


def test_ride_api_base_url_can_differ() -> None:
    """ride_base_url points the ride API elsewhere."""
    adapter = KakaoMobility(rest_api_key=KEY, ride_base_url="https://rides.example/api/")
    request = next(adapter.ride("R1"))
    assert str(request.url) == "https://rides.example/api/v1/rides/R1"


def test_constructor_rejects_an_empty_key() -> None:
    """A REST API key is required."""
    with pytest.raises(ValueError, match="rest_api_key"):
        KakaoMobility(rest_api_key="")


# -- estimate ----------------------------------------------------------------------------


def test_estimate_gets_directions_longitude_first(mobility: KakaoMobility) -> None:
    """The Navi API takes x,y (longitude, latitude) with KakaoAK auth."""
    request = next(mobility.estimate(origin=PANGYO, destination=GANGNAM))
    assert request.method == "GET"
    url = urlsplit(str(request.url))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{NAVI}/v1/directions"
    query = parse_qs(url.query)
    assert query["origin"] == ["127.108212,37.402056"]
    assert query["destination"] == ["127.0276,37.4979"]
    assert request.headers["authorization"] == f"KakaoAK {KEY}"


def test_estimate_reads_distance_duration_and_fare(mobility: KakaoMobility) -> None:
    """The summary becomes a live Estimate; the fare is taxi plus tolls."""
    estimate, _ = drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), ok(directions()))
    assert (estimate.distance_m, estimate.duration_s) == (16659, 2082)
    assert estimate.fare == Money(17500)
    assert estimate.live is True
    assert (estimate.origin, estimate.destination) == (PANGYO, GANGNAM)
    assert estimate.provider == "kakao.mobility"


def test_estimate_without_a_fare_has_none(mobility: KakaoMobility) -> None:
    """A summary without a fare gives an Estimate without one."""
    data = directions()
    del data["routes"][0]["summary"]["fare"]
    estimate, _ = drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), ok(data))
    assert estimate.fare is None


@pytest.mark.parametrize("code", [1, 102, 103, 104, 105])
def test_estimate_without_a_route_is_declined(mobility: KakaoMobility, code: int) -> None:
    """A non-zero result_code is a refusal carrying the code and Kakao's message."""
    data = {"trans_id": "x", "routes": [{"result_code": code, "result_msg": f"no route {code}"}]}
    with pytest.raises(Declined, match=f"no route {code}") as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), ok(data))
    assert caught.value.code == str(code)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ({"trans_id": "x"}, "'routes'"),
        ({"routes": []}, "no route"),
        ({"routes": ["x"]}, "no route"),
        ({"routes": [{"result_msg": "ok"}]}, "'result_code'"),
        ({"routes": [{"result_code": "0"}]}, "'result_code'"),
        ({"routes": [{"result_code": 0}]}, "'summary'"),
        (directions(distance="16659"), "'distance'"),
        (directions(distance=16659.5), "'distance'"),
        (directions(duration=-3), "negative"),
        (directions(fare={"toll": 0}), "'taxi'"),
        (directions(fare={"taxi": True, "toll": 0}), "'taxi'"),
    ],
)
def test_estimate_refuses_a_malformed_answer(
    mobility: KakaoMobility, data: dict[str, Any], what: str
) -> None:
    """Malformed directions answers are ProviderErrors naming the problem."""
    with pytest.raises(ProviderError, match=what) as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), ok(data))
    assert caught.value.operation == "mobility.estimate"


def test_estimate_refuses_truncated_json(mobility: KakaoMobility) -> None:
    """A truncated body is a ProviderError."""
    answer = httpx.Response(200, content=b'{"routes": [{"result_code": 0')
    with pytest.raises(ProviderError, match="malformed JSON"):
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), answer)


def test_estimate_html_502_is_a_retryable_provider_error(mobility: KakaoMobility) -> None:
    """A gateway's HTML page is retryable."""
    page = httpx.Response(
        502, content=b"<html>bad gateway</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(ProviderError) as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), page)
    assert caught.value.retryable is True
    assert caught.value.http_status == 502


def test_estimate_bad_parameter_is_an_invalid_request(mobility: KakaoMobility) -> None:
    """{"code": -2} is the caller's mistake."""
    answer = httpx.Response(400, json={"code": -2, "msg": "origin is invalid"})
    with pytest.raises(InvalidRequest, match="origin is invalid") as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), answer)
    assert caught.value.code == "-2"


def test_estimate_rejected_key_is_unauthorized(mobility: KakaoMobility) -> None:
    """{"code": -401} with 401 raises Unauthorized."""
    answer = httpx.Response(401, json={"code": -401, "msg": "invalid app key"})
    with pytest.raises(Unauthorized):
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), answer)


def test_estimate_quota_is_rate_limited(mobility: KakaoMobility) -> None:
    """A 429 keeps Retry-After."""
    answer = httpx.Response(429, json={"code": -10, "msg": "quota"}, headers={"Retry-After": "30"})
    with pytest.raises(RateLimited) as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), answer)
    assert caught.value.retry_after == 30.0


def test_estimate_internal_error_is_retryable(mobility: KakaoMobility) -> None:
    """{"code": -1} with 500 is a retryable ProviderError."""
    answer = httpx.Response(500, json={"code": -1, "msg": "internal"})
    with pytest.raises(ProviderError) as caught:
        drive(mobility.estimate(origin=PANGYO, destination=GANGNAM), answer)
    assert caught.value.retryable is True


def test_estimate_refuses_a_non_place(mobility: KakaoMobility) -> None:
    """origin must be a Place; nothing is sent otherwise."""
    with pytest.raises(ValueError, match="origin"):
        mobility.estimate(origin=(37.4, 127.1), destination=GANGNAM)  # type: ignore[arg-type]


# -- rides -------------------------------------------------------------------------------


def test_request_ride_posts_with_an_idempotency_key(mobility: KakaoMobility) -> None:
    """request_ride POSTs JSON with the key in the header and the body."""
    request = next(
        mobility.request_ride(
            rider="user-1", origin=PANGYO, destination=GANGNAM, idempotency_key="k1"
        )
    )
    assert (request.method, str(request.url)) == ("POST", f"{NAVI}/v1/rides")
    assert request.headers["idempotency-key"] == "k1"
    assert request.headers["authorization"] == f"KakaoAK {KEY}"
    assert json.loads(request.content) == {
        "rider": "user-1",
        "origin": {"lat": 37.402056, "lng": 127.108212, "name": "Pangyo"},
        "destination": {"lat": 37.4979, "lng": 127.0276, "name": "Gangnam"},
        "idempotency_key": "k1",
    }


def test_ride_answer_becomes_a_ride(mobility: KakaoMobility) -> None:
    """A ride object maps to Ride with driver, ETA and fare."""
    ride, _ = drive(mobility.ride("R1"), ok(ride_json()))
    assert (ride.ride_id, ride.status, ride.rider) == ("R1", RideStatus.DISPATCHED, "user-1")
    assert ride.driver == Driver("Kim", "Sonata", "12가3456")
    assert (ride.eta_s, ride.fare) == (240, Money(16300))
    assert ride.origin == Place(37.402056, 127.108212, "Pangyo")


def test_ride_without_a_driver_yet(mobility: KakaoMobility) -> None:
    """A requested ride has no driver, ETA or fare."""
    ride, _ = drive(
        mobility.ride("R1"), ok(ride_json(status="requested", driver=None, eta_s=None, fare=None))
    )
    assert (ride.status, ride.driver, ride.eta_s, ride.fare) == (
        RideStatus.REQUESTED,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"status": "teleported"}, "teleported"),
        ({"status": None}, "'status'"),
        ({"id": 7}, "'id'"),
        ({"origin": {"lat": 137.0, "lng": 127.0}}, "lat"),
        ({"origin": {"lat": "37.4", "lng": 127.0}}, "'lat'"),
        ({"destination": None}, "'destination'"),
        ({"driver": {"vehicle": "Sonata"}}, "'name'"),
        ({"eta_s": "4 min"}, "'eta_s'"),
        ({"fare": {"amount": 1.5, "currency": "KRW"}}, "'amount'"),
        ({"fare": {"amount": 100, "currency": "won"}}, "currency"),
    ],
)
def test_ride_refuses_a_malformed_answer(
    mobility: KakaoMobility, changes: dict[str, Any], what: str
) -> None:
    """A malformed ride object is a ProviderError naming the problem."""
    with pytest.raises(ProviderError, match=what):
        drive(mobility.ride("R1"), ok(ride_json(**changes)))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "ride_not_found"),
        (422, "no_drivers"),
        (422, "out_of_service_area"),
        (409, "ride_not_cancelable"),
        (409, "rental_already_ended"),
    ],
)
def test_ride_api_business_refusals_are_declined(
    mobility: KakaoMobility, status: int, code: str
) -> None:
    """Every business error code of the ride API is a Declined with that code."""
    with pytest.raises(Declined) as caught:
        drive(mobility.ride("R1"), problem(status, code))
    assert (caught.value.code, caught.value.http_status) == (code, status)


def test_ride_api_idempotency_conflict(mobility: KakaoMobility) -> None:
    """A key reused with another body raises IdempotencyConflict."""
    flow = mobility.request_ride(
        rider="user-1", origin=PANGYO, destination=GANGNAM, idempotency_key="k1"
    )
    with pytest.raises(IdempotencyConflict) as caught:
        drive(flow, problem(409, "idempotency_conflict"))
    assert caught.value.provider == "kakao.mobility"


def test_ride_api_invalid_request(mobility: KakaoMobility) -> None:
    """invalid_request is the caller's fault, not a refusal."""
    with pytest.raises(InvalidRequest):
        drive(mobility.ride("R1"), problem(400, "invalid_request"))


def test_ride_api_5xx_with_a_code_is_a_provider_error(mobility: KakaoMobility) -> None:
    """A 5xx is retryable even when it carries a business-looking code."""
    with pytest.raises(ProviderError) as caught:
        drive(mobility.ride("R1"), problem(503, "no_drivers"))
    assert caught.value.retryable is True


def test_ride_api_401_is_unauthorized(mobility: KakaoMobility) -> None:
    """A rejected key is Unauthorized, not Declined."""
    with pytest.raises(Unauthorized):
        drive(mobility.ride("R1"), problem(401, "unauthorized"))


def test_ride_id_is_quoted_in_the_path(mobility: KakaoMobility) -> None:
    """A ride id cannot escape its path segment."""
    request = next(mobility.ride("../admin"))
    assert request.url.raw_path == b"/v1/rides/..%2Fadmin"


def test_cancel_ride_posts_to_cancel_with_a_key(mobility: KakaoMobility) -> None:
    """cancel_ride POSTs to /cancel with an Idempotency-Key."""
    request = next(mobility.cancel_ride("R1", idempotency_key="c1"))
    assert (request.method, str(request.url)) == ("POST", f"{NAVI}/v1/rides/R1/cancel")
    assert request.headers["idempotency-key"] == "c1"


def test_cancel_ride_returns_the_canceled_ride(mobility: KakaoMobility) -> None:
    """The answer to a cancel is the canceled ride."""
    ride, _ = drive(
        mobility.cancel_ride("R1", idempotency_key="c1"), ok(ride_json(status="canceled"))
    )
    assert ride.status is RideStatus.CANCELED


# -- rentals -----------------------------------------------------------------------------


def test_end_rental_posts_place_and_time(mobility: KakaoMobility) -> None:
    """end_rental sends lat, lng and at with an Idempotency-Key."""
    flow = mobility.end_rental(
        rental_id="scooter-9", location=GANGNAM, at=1_700_000_600, idempotency_key="e1"
    )
    request = next(flow)
    assert str(request.url) == f"{NAVI}/v1/rentals/scooter-9/end"
    assert request.headers["idempotency-key"] == "e1"
    assert json.loads(request.content) == {"lat": 37.4979, "lng": 127.0276, "at": 1_700_000_600.0}


def test_end_rental_answer_becomes_a_reconciled_receipt(mobility: KakaoMobility) -> None:
    """The operator's receipt is reconciled and unsigned."""
    flow = mobility.end_rental(
        rental_id="scooter-9", location=GANGNAM, at=1_700_000_600, idempotency_key="e1"
    )
    receipt, _ = drive(flow, ok(receipt_json()))
    assert (receipt.rental_id, receipt.receipt_id) == ("scooter-9", "RC1")
    assert (receipt.ended_at, receipt.location) == (1_700_000_600.0, Place(37.4979, 127.0276))
    assert (receipt.fare, receipt.signature, receipt.reconciled) == (Money(2500), None, True)


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"ended_at": "noon"}, "'ended_at'"),
        ({"ended_at": -5.0}, "ended_at"),
        ({"receipt_id": ""}, "'receipt_id'"),
        ({"location": [37.4, 127.0]}, "'location'"),
    ],
)
def test_end_rental_refuses_a_malformed_receipt(
    mobility: KakaoMobility, changes: dict[str, Any], what: str
) -> None:
    """A malformed receipt is a ProviderError."""
    flow = mobility.end_rental(rental_id="s", location=GANGNAM, at=1.0, idempotency_key="e")
    with pytest.raises(ProviderError, match=what):
        drive(flow, ok(receipt_json(**changes)))


@pytest.mark.parametrize("at", [math.nan, math.inf, -1.0, True])
def test_end_rental_refuses_a_bad_time(mobility: KakaoMobility, at: Any) -> None:
    """at must be finite epoch seconds >= 0."""
    with pytest.raises(ValueError, match="at"):
        mobility.end_rental(rental_id="s", location=GANGNAM, at=at, idempotency_key="e")


# -- deep links --------------------------------------------------------------------------


def test_deep_links_open_kakao_t_and_kakao_map(mobility: KakaoMobility) -> None:
    """Kakao T gets the taxi scheme, Kakao Map the route scheme, latitude first."""
    links = {link.app: link for link in mobility.deep_links(origin=PANGYO, destination=GANGNAM)}
    taxi = urlsplit(links["kakaot"].url)
    assert (taxi.scheme, taxi.netloc) == ("kakaot", "taxi")
    assert parse_qs(taxi.query) == {
        "origin_lat": ["37.402056"],
        "origin_lng": ["127.108212"],
        "dest_lat": ["37.4979"],
        "dest_lng": ["127.0276"],
    }
    assert links["kakaomap"].url == (
        "kakaomap://route?sp=37.402056,127.108212&ep=37.4979,127.0276&by=CAR"
    )


def test_deep_links_fall_back_to_the_kakao_map_web_route(mobility: KakaoMobility) -> None:
    """Each link falls back to the web route page with names and coordinates."""
    for link in mobility.deep_links(origin=PANGYO, destination=GANGNAM):
        assert link.fallback_url == (
            "https://map.kakao.com/link/from/Pangyo,37.402056,127.108212"
            "/to/Gangnam,37.4979,127.0276"
        )


def test_deep_link_names_are_quoted(mobility: KakaoMobility) -> None:
    """A name with commas or slashes cannot break the web route path."""
    origin = Place(37.5, 127.0, "A,B/C")
    links = mobility.deep_links(origin=origin, destination=Place(37.6, 127.1))
    assert links[0].fallback_url == (
        "https://map.kakao.com/link/from/A%2CB%2FC,37.5,127.0/to/destination,37.6,127.1"
    )
