"""The failure-domain detector: correlated outages open a whole domain at once.

In October 2022 KakaoTalk, Kakao Login, KakaoPay and Kakao T shared one data center and
failed together. Per-service breakers would each have to pay their own timeouts before
opening. The detector notices when providers of *several capabilities* in one failure
domain fail within a window, and opens the whole domain: every capability in it then
fails over at once, without paying a timeout each.

A capability counts as failing in a domain when, within ``window_seconds``, its providers
in that domain had ``failures_per_capability`` failures with no success after them, or
one of their breakers opened. The domain opens when ``min_capabilities`` capabilities are
failing. Recovery mirrors the breaker: after the open time (growing with jitter on each
failed recovery) the domain is half-open and admits ``probe_successes`` probes; that many
successes close it, a failed probe reopens it.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

__all__ = ["DomainChange", "DomainOptions", "DomainState", "FailureDomainDetector"]


class DomainState(enum.Enum):
    """Where a failure domain is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class DomainOptions:
    """Options of the failure-domain detector.

    Attributes:
        window_seconds: failures older than this are forgotten.
        min_capabilities: failing capabilities that open the domain (>= 2).
        failures_per_capability: failures with no success after them that mark a
            capability failing.
        open_seconds / open_backoff / max_open_seconds / jitter: the open time, as for
            the breaker.
        probe_successes: successful probes that close a half-open domain.
        suspect_seconds: after a *timeout* in a closed domain, the domain is suspect for
            this long (0 turns it off): user calls of every capability skip it, as if it
            were open, while one probe finds out whether the domain is dark. A dark data
            center then costs one full timeout in total instead of one per capability
            before enough capabilities have failed to open it; a success anywhere in the
            domain clears the suspicion at once.
    """

    window_seconds: float = 30.0
    min_capabilities: int = 2
    failures_per_capability: int = 2
    open_seconds: float = 15.0
    open_backoff: float = 2.0
    max_open_seconds: float = 120.0
    jitter: float = 0.1
    probe_successes: int = 2
    suspect_seconds: float = 10.0

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, allowed: str, value: object) -> None:
            if not ok:
                raise ValueError(f"DomainOptions.{name} must be {allowed}, got {value!r}")

        check(
            self.window_seconds > 0 and math.isfinite(self.window_seconds),
            "window_seconds",
            "a finite number > 0",
            self.window_seconds,
        )
        check(self.min_capabilities >= 2, "min_capabilities", ">= 2", self.min_capabilities)
        check(
            self.failures_per_capability >= 1,
            "failures_per_capability",
            ">= 1",
            self.failures_per_capability,
        )
        check(
            self.open_seconds > 0 and math.isfinite(self.open_seconds),
            "open_seconds",
            "a finite number > 0",
            self.open_seconds,
        )
        check(self.open_backoff >= 1, "open_backoff", ">= 1", self.open_backoff)
        check(
            self.max_open_seconds >= self.open_seconds and math.isfinite(self.max_open_seconds),
            "max_open_seconds",
            f">= open_seconds ({self.open_seconds}) and finite",
            self.max_open_seconds,
        )
        check(0 <= self.jitter < 1, "jitter", "in [0, 1)", self.jitter)
        check(self.probe_successes >= 1, "probe_successes", ">= 1", self.probe_successes)
        check(
            self.suspect_seconds >= 0 and math.isfinite(self.suspect_seconds),
            "suspect_seconds",
            "a finite number >= 0",
            self.suspect_seconds,
        )


@dataclass(frozen=True, slots=True)
class DomainChange:
    """A failure domain moved from one state to another."""

    domain: str
    old: DomainState
    new: DomainState
    at: float
    reason: str
    capabilities: tuple[str, ...] = ()


@dataclass(slots=True)
class _Domain:
    state: DomainState = DomainState.CLOSED
    open_until: float = 0.0
    consecutive_opens: int = 0
    suspect_until: float = 0.0
    suspect_probing: bool = False
    probes_left: int = 0
    epoch: int = 0
    probe_successes: int = 0
    # capability -> times of failures since its last success
    failures: dict[str, list[float]] = field(default_factory=dict)
    # capability -> time its breaker last opened
    breaker_opened: dict[str, float] = field(default_factory=dict)


class FailureDomainDetector:
    """Tracks failures per (domain, capability) and opens whole domains.

    Not thread-safe by itself; the shell serialises calls. ``changes`` queues transitions
    for the shell to deliver to listeners.
    """

    __slots__ = ("_domains", "_rng", "changes", "options")

    def __init__(
        self, options: DomainOptions | None = None, *, rng: random.Random | None = None
    ) -> None:
        self.options = options or DomainOptions()
        self._rng = rng or random.Random()
        self._domains: dict[str, _Domain] = {}
        self.changes: list[DomainChange] = []

    def _get(self, domain: str) -> _Domain:
        d = self._domains.get(domain)
        if d is None:
            d = self._domains[domain] = _Domain()
        return d

    # -- queries -----------------------------------------------------------------------

    def state(self, domain: str, now: float) -> DomainState:
        """The domain's state at ``now`` (OPEN turns HALF_OPEN once its time is up)."""
        d = self._domains.get(domain)
        if d is None:
            return DomainState.CLOSED
        if d.state is DomainState.OPEN and now >= d.open_until:
            self._half_open(domain, d, now)
        return d.state

    def allows(self, domain: str, now: float) -> bool:
        """True when user calls may go to this domain's providers (closed, not suspect)."""
        d = self._domains.get(domain)
        return d is None or (d.state is DomainState.CLOSED and now >= d.suspect_until)

    def is_suspect(self, domain: str, now: float) -> bool:
        """True while a closed domain is suspect after a timeout (see ``suspect_seconds``)."""
        d = self._domains.get(domain)
        return d is not None and d.state is DomainState.CLOSED and now < d.suspect_until

    def try_probe(self, domain: str, now: float) -> bool:
        """Take a probe slot of a half-open or suspect domain; False when none is available.

        A suspect domain has one probe slot at a time.
        """
        if self.is_suspect(domain, now):
            d = self._domains[domain]
            if d.suspect_probing:
                return False
            d.suspect_probing = True
            return True
        if self.state(domain, now) is not DomainState.HALF_OPEN:
            return False
        d = self._domains[domain]
        if d.probes_left <= 0:
            return False
        d.probes_left -= 1
        return True

    def probe_epoch(self, domain: str) -> int:
        """The domain's current period; read it right after :meth:`try_probe` and hand it
        to :meth:`release_probe`, so a probe that outlives its period gives nothing back."""
        d = self._domains.get(domain)
        return 0 if d is None else d.epoch

    def release_probe(self, domain: str, epoch: int | None = None) -> None:
        """Return a probe slot taken by :meth:`try_probe` without a result.

        With ``epoch`` (from :meth:`probe_epoch` when the slot was taken), a slot taken in
        an earlier half-open or suspect period is not returned to the current one.
        """
        d = self._domains.get(domain)
        if d is None or (epoch is not None and epoch != d.epoch):
            return
        d.suspect_probing = False
        if d.state is DomainState.HALF_OPEN:
            d.probes_left = min(d.probes_left + 1, self.options.probe_successes)

    def retry_after(self, domain: str, now: float) -> float | None:
        """Seconds until an open domain turns half-open."""
        d = self._domains.get(domain)
        if d is None or d.state is not DomainState.OPEN:
            return None
        return max(0.0, d.open_until - now)

    def failing(self, domain: str, now: float) -> tuple[str, ...]:
        """The capabilities currently counted as failing in ``domain``."""
        d = self._domains.get(domain)
        if d is None:
            return ()
        return tuple(sorted(c for c in self._capabilities(d) if self._is_failing(d, c, now)))

    # -- events ------------------------------------------------------------------------

    def record_failure(
        self,
        domain: str,
        capability: str,
        now: float,
        *,
        probe: bool = False,
        timeout: bool = False,
    ) -> None:
        """A provider of ``capability`` in ``domain`` failed (no usable answer).

        ``timeout`` says the failure was a timeout: the signature of a dark data center
        (accepting nothing, answering nothing), which makes a closed domain suspect.
        """
        d = self._get(domain)
        if probe:
            if d.state is DomainState.HALF_OPEN:
                self._open(domain, d, now, "half-open probe failed", ())
                return
            if d.suspect_probing:
                d.suspect_probing = False
            else:
                return
        times = d.failures.setdefault(capability, [])
        times.append(now)
        if timeout and d.state is DomainState.CLOSED and self.options.suspect_seconds > 0:
            if d.suspect_until <= now:
                d.epoch += 1  # a new suspect period
                # ... with its own probe slot, even if a probe of an earlier period never
                # reported (its caller was cancelled): else nothing could probe this one.
                d.suspect_probing = False
            d.suspect_until = max(d.suspect_until, now + self.options.suspect_seconds)
        self._evaluate(domain, d, now)

    def record_success(
        self, domain: str, capability: str, now: float, *, probe: bool = False
    ) -> None:
        """A provider of ``capability`` in ``domain`` answered."""
        d = self._get(domain)
        d.failures.pop(capability, None)
        d.breaker_opened.pop(capability, None)
        # Any answer from the domain proves it is not dark.
        d.suspect_until = 0.0
        d.suspect_probing = False
        if probe and d.state is DomainState.HALF_OPEN:
            d.probe_successes += 1
            if d.probe_successes >= self.options.probe_successes:
                d.consecutive_opens = 0
                d.failures.clear()
                d.breaker_opened.clear()
                self._to(domain, d, DomainState.CLOSED, now, "probes succeeded", ())

    def record_breaker_open(self, domain: str, capability: str, now: float) -> None:
        """A breaker of a provider of ``capability`` in ``domain`` opened."""
        d = self._get(domain)
        d.breaker_opened[capability] = now
        self._evaluate(domain, d, now)

    def force_open(self, domain: str, now: float) -> None:
        """Open the domain now (an operator's decision, or a drill)."""
        d = self._get(domain)
        self._open(domain, d, now, "forced open", ())

    def reset(self, domain: str, now: float) -> None:
        """Close the domain and forget its failures."""
        d = self._get(domain)
        d.suspect_until = 0.0
        d.suspect_probing = False
        d.failures.clear()
        d.breaker_opened.clear()
        d.consecutive_opens = 0
        self._to(domain, d, DomainState.CLOSED, now, "reset", ())

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _capabilities(d: _Domain) -> set[str]:
        return set(d.failures) | set(d.breaker_opened)

    def _is_failing(self, d: _Domain, capability: str, now: float) -> bool:
        horizon = now - self.options.window_seconds
        opened = d.breaker_opened.get(capability)
        if opened is not None and opened >= horizon:
            return True
        times = d.failures.get(capability)
        if not times:
            return False
        while times and times[0] < horizon:
            times.pop(0)
        return len(times) >= self.options.failures_per_capability

    def _evaluate(self, domain: str, d: _Domain, now: float) -> None:
        if d.state is not DomainState.CLOSED:
            return
        failing = tuple(sorted(c for c in self._capabilities(d) if self._is_failing(d, c, now)))
        if len(failing) >= self.options.min_capabilities:
            self._open(domain, d, now, f"{len(failing)} capabilities failing", failing)

    def _open(
        self, domain: str, d: _Domain, now: float, reason: str, capabilities: tuple[str, ...]
    ) -> None:
        opts = self.options
        try:
            base = min(
                opts.open_seconds * opts.open_backoff**d.consecutive_opens, opts.max_open_seconds
            )
        except OverflowError:  # an outage of thousands of failed recoveries
            base = opts.max_open_seconds
        factor = 1.0 + self._rng.uniform(-opts.jitter, opts.jitter) if opts.jitter else 1.0
        d.open_until = now + base * factor
        d.consecutive_opens += 1
        d.suspect_until = 0.0
        d.suspect_probing = False
        self._to(domain, d, DomainState.OPEN, now, reason, capabilities)

    def _half_open(self, domain: str, d: _Domain, now: float) -> None:
        d.probes_left = self.options.probe_successes
        d.probe_successes = 0
        self._to(domain, d, DomainState.HALF_OPEN, now, "open time elapsed", ())

    def _to(
        self,
        domain: str,
        d: _Domain,
        new: DomainState,
        now: float,
        reason: str,
        capabilities: tuple[str, ...],
    ) -> None:
        old = d.state
        d.state = new
        d.epoch += 1
        if old is not new:
            self.changes.append(DomainChange(domain, old, new, now, reason, capabilities))

    def __repr__(self) -> str:
        return f"FailureDomainDetector(domains={sorted(self._domains)!r})"
