"""The mobility contract, run against every live mobility provider and its simulator.

Each provider joins through a :class:`MobilityHarness`: the provider pointed at its
simulator, two places inside its service area, and the simulator's controls (open a
rental, dispatch or finish a ride, run out of drivers). Every test speaks through the
:class:`MobilityProvider` Protocol only; async tests run the simulator in-process, the
``network`` tests on a real loopback uvicorn server with a sync client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest

from superapp_sdk._errors import Declined, IdempotencyConflict, ProviderError, Unauthorized
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.capabilities.mobility import (
    Estimate,
    MobilityProvider,
    Place,
    RentalReceipt,
    Ride,
    RideStatus,
)
from superapp_sdk.providers._http import Call, arun_call, run_call
from superapp_sdk.providers.kakao.mobility import KakaoMobility
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing._servers import UvicornServer
from superapp_sdk.testing.kakao._asgi import App, Fire
from superapp_sdk.testing.kakao.mobility import MobilityState, routes
from tests._contract import Driver

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MobilityHarness:
    """A mobility provider wired to its simulator, with the simulator's controls."""

    provider: MobilityProvider
    provider_at: Callable[[str], MobilityProvider]  # the provider for a simulator root URL
    app: App
    origin: Place
    destination: Place
    now: Callable[[], float]  # the simulator's wall clock
    start_rental: Callable[[str, float], None]  # open a rental started at epoch seconds
    dispatch: Callable[[str], None]  # a driver accepts the ride
    complete: Callable[[str], None]  # the ride finishes
    no_drivers: Callable[[], None]  # every later ride request finds no driver
    rides_booked: Callable[[], int]  # rides the operator created, ever


def kakao_mobility() -> MobilityHarness:
    """KakaoMobility against the simulated Navi API and ride API."""
    clock = FakeClock()
    state = MobilityState(clock=clock)

    def provider_at(root: str) -> KakaoMobility:
        return KakaoMobility(rest_api_key=state.rest_api_key, mobility_base_url=f"{root}/mobility")

    def no_drivers() -> None:
        state.drivers_available = False

    return MobilityHarness(
        provider=provider_at("http://kakao.sim"),
        provider_at=provider_at,
        app=App(routes(state)),
        origin=Place(37.402056, 127.108212, "Pangyo station"),
        destination=Place(37.4979, 127.0276, "Gangnam station"),
        now=clock.time,
        start_rental=lambda rental_id, at: state.start_rental(rental_id, started_at=at),
        dispatch=state.dispatch,
        complete=lambda ride_id: state.set_status(ride_id, "completed"),
        no_drivers=no_drivers,
        rides_booked=lambda: len(state.rides),
    )


#: Every live mobility provider of the SDK; alternates append their harness here.
HARNESSES = [pytest.param(kakao_mobility, id="kakao.mobility")]


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest) -> MobilityHarness:
    factory: Callable[[], MobilityHarness] = request.param
    return factory()


@pytest.fixture
async def client(harness: MobilityHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app)) as http:
        yield http


class Trips(Driver[MobilityProvider]):
    """Drives calls of one provider through one async client."""

    def __init__(self, harness: MobilityHarness, http: httpx.AsyncClient) -> None:
        super().__init__(harness.provider, http)
        self.harness = harness

    async def estimate(self, origin: Place, destination: Place) -> Estimate:
        return await self(
            self.provider.estimate(origin=origin, destination=destination), "mobility.estimate"
        )

    async def book(self, key: str, rider: str = "user-1", destination: Place | None = None) -> Ride:
        return await self(
            self.provider.request_ride(
                rider=rider,
                origin=self.harness.origin,
                destination=destination or self.harness.destination,
                idempotency_key=key,
            ),
            "mobility.request_ride",
        )

    async def ride(self, ride_id: str) -> Ride:
        return await self(self.provider.ride(ride_id), "mobility.ride")

    async def cancel(self, ride_id: str, key: str) -> Ride:
        return await self(
            self.provider.cancel_ride(ride_id, idempotency_key=key), "mobility.cancel_ride"
        )

    async def end(self, rental_id: str, at: float, key: str) -> RentalReceipt:
        return await self(
            self.provider.end_rental(
                rental_id=rental_id, location=self.harness.destination, at=at, idempotency_key=key
            ),
            "mobility.end_rental",
        )


@pytest.fixture
def trips(harness: MobilityHarness, client: httpx.AsyncClient) -> Trips:
    return Trips(harness, client)


# -- identity of the provider ------------------------------------------------------------


def test_provider_is_a_mobility_provider(harness: MobilityHarness) -> None:
    """Every provider satisfies the Protocol and names its capability and domain."""
    assert isinstance(harness.provider, MobilityProvider)
    assert harness.provider.capability is Capability.MOBILITY
    assert harness.provider.failure_domain
    assert "mobility.estimate" in harness.provider.operations


# -- estimates ---------------------------------------------------------------------------


async def test_an_estimate_has_distance_duration_and_fare(trips: Trips) -> None:
    """A live estimate between two stations is plausible and priced in won."""
    h = trips.harness
    estimate = await trips.estimate(h.origin, h.destination)
    assert (estimate.origin, estimate.destination) == (h.origin, h.destination)
    # Pangyo to Gangnam is about 13 km as the crow flies; roads are longer, not shorter.
    assert 13_000 <= estimate.distance_m <= 40_000
    assert 600 <= estimate.duration_s <= 2 * 3600
    assert estimate.fare is not None
    assert estimate.fare.currency == "KRW"
    assert estimate.fare.amount > 0
    assert estimate.live is True
    assert estimate.provider == trips.provider.name


async def test_a_longer_trip_costs_more(trips: Trips) -> None:
    """Fares grow with distance."""
    h = trips.harness
    near = await trips.estimate(h.origin, Place(37.3947, 127.1112))
    far = await trips.estimate(h.origin, h.destination)
    assert near.fare is not None
    assert far.fare is not None
    assert near.distance_m < far.distance_m
    assert near.fare.amount < far.fare.amount


async def test_a_trip_to_the_same_place_is_declined(trips: Trips) -> None:
    """No route exists between a point and itself."""
    with pytest.raises(Declined):
        await trips.estimate(trips.harness.origin, trips.harness.origin)


async def test_a_trip_outside_the_service_area_is_declined(trips: Trips) -> None:
    """A destination with no roads of the provider is refused, not an error to retry."""
    with pytest.raises(Declined):
        await trips.estimate(trips.harness.origin, Place(0.0, 0.0))


# -- rides -------------------------------------------------------------------------------


async def test_a_requested_ride_is_waiting_for_a_driver(trips: Trips) -> None:
    """A new ride is REQUESTED for this rider between these places."""
    h = trips.harness
    ride = await trips.book("ride-key-1")
    assert ride.status is RideStatus.REQUESTED
    assert (ride.rider, ride.origin, ride.destination) == ("user-1", h.origin, h.destination)
    assert ride.provider == trips.provider.name
    assert (await trips.ride(ride.ride_id)).ride_id == ride.ride_id


async def test_a_retried_request_books_one_ride(trips: Trips) -> None:
    """The same idempotency key answers the same ride and books nothing more."""
    first = await trips.book("ride-key-1")
    again = await trips.book("ride-key-1")
    assert again.ride_id == first.ride_id
    assert trips.harness.rides_booked() == 1


async def test_a_key_reused_for_another_trip_is_a_conflict(trips: Trips) -> None:
    """One key, two different requests: refused, nothing booked twice."""
    await trips.book("ride-key-1")
    with pytest.raises(IdempotencyConflict):
        await trips.book("ride-key-1", destination=Place(37.5665, 126.9780, "City Hall"))
    assert trips.harness.rides_booked() == 1


async def test_a_dispatched_ride_shows_its_driver(trips: Trips) -> None:
    """Once a driver accepts, the ride names them and an ETA."""
    ride = await trips.book("ride-key-1")
    trips.harness.dispatch(ride.ride_id)
    seen = await trips.ride(ride.ride_id)
    assert seen.status is RideStatus.DISPATCHED
    assert seen.driver is not None
    assert seen.eta_s is not None


async def test_a_canceled_ride_stays_canceled(trips: Trips) -> None:
    """Canceling is final, and canceling again changes nothing."""
    ride = await trips.book("ride-key-1")
    assert (await trips.cancel(ride.ride_id, "cancel-1")).status is RideStatus.CANCELED
    assert (await trips.cancel(ride.ride_id, "cancel-2")).status is RideStatus.CANCELED
    assert (await trips.ride(ride.ride_id)).status is RideStatus.CANCELED


async def test_a_finished_ride_cannot_be_canceled(trips: Trips) -> None:
    """A completed ride refuses a cancel."""
    ride = await trips.book("ride-key-1")
    trips.harness.complete(ride.ride_id)
    with pytest.raises(Declined):
        await trips.cancel(ride.ride_id, "cancel-1")
    assert (await trips.ride(ride.ride_id)).status is RideStatus.COMPLETED


async def test_an_unknown_ride_is_declined(trips: Trips) -> None:
    """Asking about a ride that does not exist is a refusal."""
    with pytest.raises(Declined):
        await trips.ride("no-such-ride")


async def test_no_driver_is_declined_and_books_nothing(trips: Trips) -> None:
    """When no driver is available the request is refused, never half-booked."""
    trips.harness.no_drivers()
    with pytest.raises(Declined):
        await trips.book("ride-key-1")
    assert trips.harness.rides_booked() == 0


# -- rentals -----------------------------------------------------------------------------


async def test_ending_a_rental_gives_a_reconciled_receipt(trips: Trips) -> None:
    """The operator's receipt records where and when, with a fare."""
    h = trips.harness
    now = h.now()
    h.start_rental("scooter-1", now - 600)
    receipt = await trips.end("scooter-1", now, "end-1")
    assert (receipt.rental_id, receipt.ended_at) == ("scooter-1", now)
    assert receipt.location == Place(h.destination.lat, h.destination.lng)
    assert receipt.fare is not None
    assert receipt.fare.amount > 0
    assert (receipt.reconciled, receipt.signature) == (True, None)


async def test_ending_a_rental_twice_with_one_key_gives_one_receipt(trips: Trips) -> None:
    """A retried end returns the same receipt."""
    h = trips.harness
    h.start_rental("scooter-1", h.now() - 60)
    first = await trips.end("scooter-1", h.now(), "end-1")
    again = await trips.end("scooter-1", h.now(), "end-1")
    assert again.receipt_id == first.receipt_id


async def test_ending_an_ended_rental_under_another_key_is_declined(trips: Trips) -> None:
    """A rental ends once."""
    h = trips.harness
    h.start_rental("scooter-1", h.now() - 60)
    await trips.end("scooter-1", h.now(), "end-1")
    with pytest.raises(Declined):
        await trips.end("scooter-1", h.now(), "end-2")


async def test_ending_an_unknown_rental_is_declined(trips: Trips) -> None:
    """There is nothing to end."""
    with pytest.raises(Declined):
        await trips.end("scooter-404", trips.harness.now(), "end-1")


# -- hand-off and faults -----------------------------------------------------------------


def test_deep_links_hand_the_trip_over_with_a_web_fallback(harness: MobilityHarness) -> None:
    """At least one app link, each with an https fallback, and no I/O."""
    links = harness.provider.deep_links(origin=harness.origin, destination=harness.destination)
    assert links
    for link in links:
        assert "://" in link.url
        assert link.fallback_url is not None
        assert link.fallback_url.startswith("https://")


async def test_a_burning_provider_gives_a_retryable_provider_error(trips: Trips) -> None:
    """5xx pages while the data center burns are retryable ProviderErrors."""
    trips.harness.app.fire.set("mobility", Fire.ERROR_5XX)
    with pytest.raises(ProviderError) as caught:
        await trips.estimate(trips.harness.origin, trips.harness.destination)
    assert caught.value.retryable is True
    assert caught.value.http_status == 503


# -- the same flows, sync, over a real loopback socket -----------------------------------


@pytest.fixture
def served(harness: MobilityHarness) -> Iterator[tuple[MobilityProvider, httpx.Client]]:
    with UvicornServer(harness.app) as server, httpx.Client() as http:
        yield harness.provider_at(server.url), http


@pytest.mark.network
def test_sync_estimate_and_ride_over_loopback(
    harness: MobilityHarness, served: tuple[MobilityProvider, httpx.Client]
) -> None:
    """estimate, request_ride and a replayed request work on a real socket."""
    provider, http = served

    def run(call: Call[T], operation: str) -> T:
        return run_call(http, call, provider=provider.name, operation=operation, timeout=10)

    estimate = run(
        provider.estimate(origin=harness.origin, destination=harness.destination), "estimate"
    )
    assert estimate.distance_m > 0

    def book() -> Ride:
        return run(
            provider.request_ride(
                rider="user-1",
                origin=harness.origin,
                destination=harness.destination,
                idempotency_key="ride-key-1",
            ),
            "mobility.request_ride",
        )

    assert book().ride_id == book().ride_id
    assert harness.rides_booked() == 1


@pytest.mark.network
def test_sync_rental_end_refusal_over_loopback(
    harness: MobilityHarness, served: tuple[MobilityProvider, httpx.Client]
) -> None:
    """A refusal crosses a real socket as Declined."""
    provider, http = served
    call = provider.end_rental(
        rental_id="scooter-404",
        location=harness.destination,
        at=harness.now(),
        idempotency_key="end-1",
    )
    with pytest.raises(Declined):
        run_call(http, call, provider=provider.name, operation="mobility.end_rental", timeout=10)


# -- the Kakao Mobility simulator itself -------------------------------------------------


@pytest.fixture
def kakao_sim() -> tuple[MobilityState, App]:
    state = MobilityState(clock=FakeClock())
    return state, App(routes(state))


async def test_simulator_refuses_malformed_coordinates_like_the_navi_api(
    kakao_sim: tuple[MobilityState, App],
) -> None:
    """A coordinate that is not x,y gets 400 {"code": -2, "msg": ...}."""
    state, app = kakao_sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        answer = await http.get(
            "http://kakao.sim/mobility/v1/directions",
            params={"origin": "Pangyo", "destination": "127.0276,37.4979"},
            headers={"Authorization": f"KakaoAK {state.rest_api_key}"},
        )
    assert answer.status_code == 400
    assert answer.json()["code"] == -2
    assert "origin" in answer.json()["msg"]


async def test_simulator_refuses_a_wrong_key(kakao_sim: tuple[MobilityState, App]) -> None:
    """A wrong KakaoAK key is Unauthorized through the adapter."""
    _, app = kakao_sim
    mobility = KakaoMobility(rest_api_key="wrong", mobility_base_url="http://kakao.sim/mobility")
    call = mobility.estimate(origin=Place(37.40, 127.10), destination=Place(37.49, 127.02))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        with pytest.raises(Unauthorized):
            await arun_call(http, call, provider=mobility.name, operation="mobility.estimate")


async def test_simulator_no_route_answers_result_code_1(
    kakao_sim: tuple[MobilityState, App],
) -> None:
    """With no_route set, directions answer result_code 1, a Declined with code '1'."""
    state, app = kakao_sim
    state.no_route = True
    mobility = KakaoMobility(
        rest_api_key=state.rest_api_key, mobility_base_url="http://kakao.sim/mobility"
    )
    call = mobility.estimate(origin=Place(37.40, 127.10), destination=Place(37.49, 127.02))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        with pytest.raises(Declined) as caught:
            await arun_call(http, call, provider=mobility.name, operation="mobility.estimate")
    assert caught.value.code == "1"


async def test_simulator_sends_sections_unless_summary_is_asked(
    kakao_sim: tuple[MobilityState, App],
) -> None:
    """summary=true leaves the sections out, as the Navi API does."""
    state, app = kakao_sim
    params = {"origin": "127.10,37.40", "destination": "127.02,37.49"}
    headers = {"Authorization": f"KakaoAK {state.rest_api_key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        full = await http.get(
            "http://kakao.sim/mobility/v1/directions", params=params, headers=headers
        )
        short = await http.get(
            "http://kakao.sim/mobility/v1/directions",
            params={**params, "summary": "true"},
            headers=headers,
        )
    assert "sections" in full.json()["routes"][0]
    assert "sections" not in short.json()["routes"][0]
    assert full.json()["routes"][0]["summary"] == short.json()["routes"][0]["summary"]


async def test_simulator_requires_an_idempotency_key_on_writes(
    kakao_sim: tuple[MobilityState, App],
) -> None:
    """A ride request without Idempotency-Key is invalid_request and books nothing."""
    state, app = kakao_sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        answer = await http.post(
            "http://kakao.sim/mobility/v1/rides",
            json={
                "rider": "u",
                "origin": {"lat": 37.40, "lng": 127.10},
                "destination": {"lat": 37.49, "lng": 127.02},
            },
            headers={"Authorization": f"KakaoAK {state.rest_api_key}"},
        )
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")
    assert state.rides == {}


async def test_simulator_marks_replayed_answers(kakao_sim: tuple[MobilityState, App]) -> None:
    """A replayed write carries Idempotent-Replayed: true, like Stripe."""
    state, app = kakao_sim
    url = "http://kakao.sim/mobility/v1/rides"
    ride = {
        "rider": "u",
        "origin": {"lat": 37.40, "lng": 127.10},
        "destination": {"lat": 37.49, "lng": 127.02},
    }
    headers = {"Authorization": f"KakaoAK {state.rest_api_key}", "Idempotency-Key": "k"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        first = await http.post(url, json=ride, headers=headers)
        again = await http.post(url, json=ride, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_simulator_records_ended_rentals(kakao_sim: tuple[MobilityState, App]) -> None:
    """The simulator keeps each ended rental's receipt, with a per-minute fare."""
    state, app = kakao_sim
    start = state.clock.time()
    state.start_rental("scooter-1", started_at=start)
    mobility = KakaoMobility(
        rest_api_key=state.rest_api_key, mobility_base_url="http://kakao.sim/mobility"
    )
    call = mobility.end_rental(
        rental_id="scooter-1", location=Place(37.49, 127.02), at=start + 600, idempotency_key="e"
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        receipt = await arun_call(http, call, provider=mobility.name, operation="end")
    ended = state.rentals_ended()
    assert ended["scooter-1"]["receipt_id"] == receipt.receipt_id
    assert receipt.fare is not None
    assert receipt.fare.amount == state.unlock_fare + 10 * state.per_minute_fare
