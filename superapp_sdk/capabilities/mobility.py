"""Mobility: the models every mobility provider returns, and the provider Protocol.

Live providers (Kakao Mobility, a ride-hailing alternate) answer estimates from live
traffic and take ride requests; a timetable provider (GTFS) answers estimates labelled
``live=False`` with a scheduled departure. Ending a scooter rental must work even when
the operator is unreachable, so a :class:`RentalReceipt` may be a locally signed receipt
(``reconciled=False``) settled later.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from superapp_sdk.capabilities._common import Money, Provider, require_seconds, require_text

if TYPE_CHECKING:
    from superapp_sdk.providers._http import Call

__all__ = [
    "MOBILITY_OPERATIONS",
    "DeepLink",
    "Driver",
    "Estimate",
    "MobilityProvider",
    "Place",
    "RentalReceipt",
    "Ride",
    "RideStatus",
]

#: The operations of a full mobility provider, as listed in ``Provider.operations``.
MOBILITY_OPERATIONS = frozenset(
    {
        "mobility.estimate",
        "mobility.request_ride",
        "mobility.ride",
        "mobility.cancel_ride",
        "mobility.end_rental",
        "mobility.deep_links",
    }
)


def _require_count(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}.{name} must be an int >= 0, got {value!r}")


def _require_money(owner: str, name: str, value: object) -> None:
    if value is not None and not isinstance(value, Money):
        raise ValueError(f"{owner}.{name} must be Money or None, got {value!r}")


def _require_place(owner: str, name: str, value: object) -> None:
    if not isinstance(value, Place):
        raise ValueError(f"{owner}.{name} must be a Place, got {value!r}")


@dataclass(frozen=True, slots=True)
class Place:
    """A point on the earth (WGS 84 degrees), with an optional display name.

    ``Place(37.402056, 127.108212, "Pangyo")``: latitude first, as people say it. Wire
    formats that put longitude first (Kakao Mobility's ``x,y``) are the adapters' business.
    """

    lat: float
    lng: float
    name: str | None = None

    def __post_init__(self) -> None:
        for axis, limit in (("lat", 90.0), ("lng", 180.0)):
            value = getattr(self, axis)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not -limit <= value <= limit
            ):
                raise ValueError(
                    f"Place.{axis} must be a finite number in [-{limit:g}, {limit:g}], "
                    f"got {value!r}"
                )
            object.__setattr__(self, axis, float(value))
        require_text("Place", "name", self.name, optional=True)


@dataclass(frozen=True, slots=True)
class Estimate:
    """How far, how long and how much from ``origin`` to ``destination``.

    Attributes:
        origin: where the trip starts.
        destination: where it ends.
        distance_m: route length in metres.
        duration_s: travel time in seconds.
        fare: the expected price (taxi fare plus tolls for a ride), when known.
        provider: who estimated it.
        live: ``True`` when computed from live traffic; ``False`` for a timetable.
        scheduled_departure: epoch seconds of the scheduled departure (timetables).
    """

    origin: Place
    destination: Place
    distance_m: int
    duration_s: int
    fare: Money | None
    provider: str
    live: bool
    scheduled_departure: float | None = None

    def __post_init__(self) -> None:
        _require_place("Estimate", "origin", self.origin)
        _require_place("Estimate", "destination", self.destination)
        _require_count("Estimate", "distance_m", self.distance_m)
        _require_count("Estimate", "duration_s", self.duration_s)
        _require_money("Estimate", "fare", self.fare)
        require_text("Estimate", "provider", self.provider)
        if not isinstance(self.live, bool):
            raise ValueError(f"Estimate.live must be a bool, got {self.live!r}")
        require_seconds("Estimate", "scheduled_departure", self.scheduled_departure, optional=True)


class RideStatus(enum.Enum):
    """Where a ride stands."""

    #: Requested; looking for a driver.
    REQUESTED = "requested"
    #: A driver accepted and is on the way.
    DISPATCHED = "dispatched"
    #: The driver is at the pick-up point.
    ARRIVED = "arrived"
    #: The rider is on board.
    IN_PROGRESS = "in_progress"
    #: Dropped off.
    COMPLETED = "completed"
    #: Canceled by the rider or the operator.
    CANCELED = "canceled"
    #: No driver could be found, or the operator gave up.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Driver:
    """The driver assigned to a ride."""

    name: str
    vehicle: str | None = None
    plate: str | None = None

    def __post_init__(self) -> None:
        require_text("Driver", "name", self.name)
        require_text("Driver", "vehicle", self.vehicle, optional=True)
        require_text("Driver", "plate", self.plate, optional=True)


@dataclass(frozen=True, slots=True)
class Ride:
    """A ride request and its progress.

    Attributes:
        ride_id: the provider's id of the ride.
        provider: who serves it.
        status: where it stands.
        rider: the app-level user riding.
        origin: pick-up point.
        destination: drop-off point.
        driver: the assigned driver, once there is one.
        eta_s: seconds until pick-up, while the driver is on the way.
        fare: the expected (or, once completed, final) price.
    """

    ride_id: str
    provider: str
    status: RideStatus
    rider: str
    origin: Place
    destination: Place
    driver: Driver | None = None
    eta_s: int | None = None
    fare: Money | None = None

    def __post_init__(self) -> None:
        require_text("Ride", "ride_id", self.ride_id)
        require_text("Ride", "provider", self.provider)
        if not isinstance(self.status, RideStatus):
            raise ValueError(f"Ride.status must be a RideStatus, got {self.status!r}")
        require_text("Ride", "rider", self.rider)
        _require_place("Ride", "origin", self.origin)
        _require_place("Ride", "destination", self.destination)
        if self.driver is not None and not isinstance(self.driver, Driver):
            raise ValueError(f"Ride.driver must be a Driver or None, got {self.driver!r}")
        _require_count("Ride", "eta_s", self.eta_s, optional=True)
        _require_money("Ride", "fare", self.fare)


@dataclass(frozen=True, slots=True)
class RentalReceipt:
    """Proof that a rental (scooter, bike) ended at a place and time.

    Attributes:
        rental_id: the operator's id of the rental.
        provider: who issued the receipt (the operator, or the SDK when offline).
        ended_at: epoch seconds when the rental ended.
        location: where it ended.
        fare: the price, when the operator computed it.
        receipt_id: the receipt's id.
        signature: a local signature when the SDK issued it offline; ``None`` for an
            operator's receipt.
        reconciled: ``True`` once the operator has recorded the end.
    """

    rental_id: str
    provider: str
    ended_at: float
    location: Place
    fare: Money | None
    receipt_id: str
    signature: str | None = None
    reconciled: bool = True

    def __post_init__(self) -> None:
        require_text("RentalReceipt", "rental_id", self.rental_id)
        require_text("RentalReceipt", "provider", self.provider)
        require_seconds("RentalReceipt", "ended_at", self.ended_at)
        _require_place("RentalReceipt", "location", self.location)
        _require_money("RentalReceipt", "fare", self.fare)
        require_text("RentalReceipt", "receipt_id", self.receipt_id)
        require_text("RentalReceipt", "signature", self.signature, optional=True)
        if not isinstance(self.reconciled, bool):
            raise ValueError(f"RentalReceipt.reconciled must be a bool, got {self.reconciled!r}")


@dataclass(frozen=True, slots=True)
class DeepLink:
    """A link that opens another app at a trip, with a web page for when it is missing.

    Attributes:
        app: the app it opens (``"kakaot"``, ``"kakaomap"``).
        url: the app-scheme URL.
        fallback_url: an https page to open when the app is not installed.
    """

    app: str
    url: str
    fallback_url: str | None = None

    def __post_init__(self) -> None:
        require_text("DeepLink", "app", self.app)
        require_text("DeepLink", "url", self.url)
        require_text("DeepLink", "fallback_url", self.fallback_url, optional=True)


@runtime_checkable
class MobilityProvider(Provider, Protocol):
    """What the mobility service needs from a provider (Kakao Mobility, alternates, GTFS).

    Every method but :meth:`deep_links` returns a
    :data:`~superapp_sdk.providers._http.Call`: nothing is sent until the SDK drives it.
    Business refusals (no route, no driver, unknown ride) raise
    :class:`~superapp_sdk._errors.Declined`.
    """

    def estimate(self, *, origin: Place, destination: Place) -> Call[Estimate]:
        """Distance, duration and fare from ``origin`` to ``destination``."""
        ...

    def request_ride(
        self, *, rider: str, origin: Place, destination: Place, idempotency_key: str
    ) -> Call[Ride]:
        """Ask for a ride; the same key always names the same ride."""
        ...

    def ride(self, ride_id: str) -> Call[Ride]:
        """A ride's current state."""
        ...

    def cancel_ride(self, ride_id: str, *, idempotency_key: str) -> Call[Ride]:
        """Cancel a ride that has not finished."""
        ...

    def end_rental(
        self, *, rental_id: str, location: Place, at: float, idempotency_key: str
    ) -> Call[RentalReceipt]:
        """End a rental at ``location`` at epoch seconds ``at``."""
        ...

    def deep_links(self, *, origin: Place, destination: Place) -> list[DeepLink]:
        """Links that hand the trip to the provider's own app (pure: no I/O)."""
        ...
