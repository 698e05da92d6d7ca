"""The fire drill: a backend on superapp-sdk lives through a Kakao data-center fire.

``superapp drill`` (``make drill``) starts a simulated Kakao data center on loopback
(Kakao Login, KakaoTalk Message, KakaoPay, Kakao Mobility, each behind its own fault
proxy), in-process alternates for every capability, and an app wired to both. Then:

1. a normal day: traffic on all four capabilities, served by Kakao;
2. the fire: every Kakao service accepts connections and never answers, mid-traffic;
3. the alternates fail too: writes are queued, reads served from the cache;
4. the fire is out: the outbox drains, the domain closes, traffic returns to Kakao.

It prints what every call got and checks the promises at the end, from what the providers
executed and what the app answers once the fire is out: no payment made twice, no message
lost or sent twice by a provider, no user logged out, no rider stuck in a rental, the
outbox drained with no dead letter, and every capability served by Kakao again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superapp_sdk._app import SuperApp, Timeouts
from superapp_sdk._errors import ProviderError, SuperAppError
from superapp_sdk._ops import OfflinePolicy
from superapp_sdk._outcome import Outcome, Via
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.core.breaker import BreakerOptions, StateChange
from superapp_sdk.core.domains import DomainChange, DomainOptions
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

__all__ = ["main"]

USER = "user-minji"
ROUTE = (Place(37.4979, 127.0276, "Gangnam"), Place(37.5663, 126.9779, "City Hall"))
TIMEOUT = 1.0


@dataclass
class Phase:
    """What one phase of the drill saw."""

    name: str
    calls: int = 0
    via: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    full_timeout_waits: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, started: float, outcome: Outcome[Any] | None, error: str | None) -> None:
        self.calls += 1
        self.latencies.append(time.perf_counter() - started)
        if outcome is not None:
            self.via[f"{outcome.via.value}"] += 1
            self.full_timeout_waits += sum(
                1 for a in outcome.attempts if not a.skipped and a.seconds >= TIMEOUT * 0.95
            )
        if error is not None:
            self.errors[error] += 1

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p = (lambda q: ordered[max(0, int(q * len(ordered)) - 1)] * 1e3) if ordered else None
        return {
            "phase": self.name,
            "calls": self.calls,
            "via": dict(self.via),
            "errors": dict(self.errors),
            "full_timeout_waits": self.full_timeout_waits,
            "p50_ms": p(0.5) if p else None,
            "p99_ms": p(0.99) if p else None,
        }


class Drill:
    """The rig and the traffic."""

    def __init__(self, state_dir: Path, *, rounds: int, say: Any) -> None:
        self.say = say
        self.rounds = rounds
        self.dc = KakaoDataCenter(hang_seconds=5.0)
        self.server = DataCenterServer(self.dc)
        self.server.start()
        kakao = self.server.adapters()
        self.echo_chat = EchoChat()
        self.echo_pay = EchoPay()
        self.echo_login = EchoLogin(redirect_uri="https://app.example/login/echo")
        self.echo_mobility = EchoMobility()
        self.alternates = (self.echo_chat, self.echo_pay, self.echo_login, self.echo_mobility)
        self.app = SuperApp(
            identity=[kakao.login, self.echo_login],
            chat=[kakao.talk, self.echo_chat],
            payment=[kakao.pay, self.echo_pay],
            mobility=[kakao.mobility, self.echo_mobility],
            state_dir=state_dir,
            timeouts=Timeouts(read=TIMEOUT, write=TIMEOUT, payment=TIMEOUT * 2, floor=0.1),
            breaker=BreakerOptions(minimum_calls=3, window_size=10, open_seconds=1.0),
            domains=DomainOptions(open_seconds=1.0, failures_per_capability=1),
        )
        self.events: list[str] = []
        self.app.on(StateChange, lambda e: self.events.append(f"breaker {e.name}: {e.new.value}"))
        self.app.on(DomainChange, lambda e: self.events.append(f"domain {e.domain}: {e.new.value}"))
        creds = self.dc.credentials
        d = self.app.directory
        d.put(USER, provider="kakao.talk", address=creds.friend_uuids[0])
        d.put(USER, provider="echo.chat", address="minji@echo.example")
        d.put(USER, provider="kakao.pay", billing_key=creds.billing_key)
        d.put(USER, provider="echo.pay", billing_key=self.echo_pay.issue_billing_key(USER))
        self.sent: list[str] = []
        self.orders: list[str] = []
        self.rentals: list[str] = []
        self.session_id = ""
        self.step = 0

    def close(self) -> None:
        self.app.close()
        self.server.stop()

    def call(self, phase: Phase, what: str, fn: Any) -> Outcome[Any] | None:
        started = time.perf_counter()
        try:
            outcome: Outcome[Any] = fn()
        except SuperAppError as exc:
            phase.record(started, None, type(exc).__name__)
            self.say(f"  {what:<34} ! {type(exc).__name__}")
            return None
        phase.record(started, outcome, None)
        extra = f" stale {outcome.stale_for:.1f}s" if outcome.stale_for is not None else ""
        ticket = f" ticket {outcome.ticket}" if outcome.ticket else ""
        ms = (time.perf_counter() - started) * 1e3
        self.say(
            f"  {what:<34} {outcome.via.value:<9} {outcome.provider or '-':<15}"
            f" {ms:7.1f} ms{extra}{ticket}"
        )
        return outcome

    def traffic(self, phase: Phase) -> None:
        """One round: a message, a charge, an estimate, a session refresh, a rental end."""
        app = self.app
        self.step += 1
        n = self.step
        text = f"message {n}"
        out = self.call(
            phase,
            f"chat.send #{n}",
            lambda: app.chat.send(to=USER, text=text, conversation="trip"),
        )
        if out is not None:
            self.sent.append(text)
        order = f"order-{n}"
        out = self.call(
            phase,
            f"payment.charge {order}",
            lambda: app.payment.charge(
                order_id=order, amount=4_500, user_id=USER, offline=OfflinePolicy.QUEUE
            ),
        )
        if out is not None:
            self.orders.append(order)
        self.call(
            phase,
            "mobility.estimate",
            lambda: app.mobility.estimate(origin=ROUTE[0], destination=ROUTE[1]),
        )
        self.call(phase, "identity.refresh", lambda: app.identity.refresh(self.session_id))
        rental = f"scooter-{n}"
        self.dc.mobility.start_rental(rental)
        self.echo_mobility.start_rental(rental)
        out = self.call(
            phase,
            f"mobility.end_rental {rental}",
            lambda: app.mobility.end_rental(rental_id=rental, location=ROUTE[1], at=time.time()),
        )
        if out is not None:
            self.rentals.append(rental)

    def login(self) -> None:
        code = self.dc.issue_code(nonce="drill")
        session = self.app.identity.complete_login(provider="kakao.login", code=code, nonce="drill")
        self.session_id = session.value.session_id

    def run(self) -> dict[str, Any]:
        say = self.say
        self.login()
        phases = []
        say("\n1. A normal day: Kakao serves everything")
        normal = Phase("normal")
        for _ in range(self.rounds):
            self.traffic(normal)
        phases.append(normal)

        say("\n2. 15:33, the fire: every Kakao service accepts connections and never answers")
        self.server.burn(Burn.HANG)
        fire = Phase("fire")
        for _ in range(self.rounds):
            self.traffic(fire)
        phases.append(fire)

        say("\n3. The alternates fail too: writes are queued, reads come from the cache")
        for provider in self.alternates:
            provider.fail = ProviderError("alternate down for the drill")
        dark = Phase("everything down")
        for _ in range(self.rounds):
            self.traffic(dark)
        phases.append(dark)

        say("\n4. The fire is out: the outbox drains and traffic returns to Kakao")
        self.server.restore()
        for provider in self.alternates:
            provider.fail = None
        drained = self.app.drain(timeout=60)
        back = Phase("restored")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self.call(
                back,
                "mobility.estimate (probe traffic)",
                lambda: self.app.mobility.estimate(origin=ROUTE[0], destination=ROUTE[1]),
            )
            if out is not None and out.via is Via.PRIMARY:
                break
            time.sleep(0.3)
        for _ in range(self.rounds):
            self.traffic(back)
        phases.append(back)
        drained = self.app.drain(timeout=60) and drained
        return self.verdict(phases, drained)

    def verdict(self, phases: list[Phase], drained: bool) -> dict[str, Any]:
        """Each promise checked against what the providers executed and what the app
        answers now, never against the drill's own bookkeeping."""
        charges: Counter[str] = Counter()
        for order, executed in self.dc.payment.ledger.items():
            charges[order] += len(executed)
        for order in self.orders:
            charges[order] += len(self.echo_pay.effects("payment.charge", order_id=order))
        double_charged = sorted(o for o, c in charges.items() if c > 1)
        kakao_sent = Counter(d.text for d in self.dc.chat.deliveries())
        echo_sent = Counter(e.text or "" for e in self.echo_chat.effects("chat.send"))
        lost = [t for t in self.sent if kakao_sent[t] + echo_sent[t] == 0]
        # At most once per provider; one copy per channel is the chat policy's choice.
        duplicated = sorted(t for sent in (kakao_sent, echo_sent) for t, c in sent.items() if c > 1)
        uncharged = [o for o in self.orders if charges[o] == 0]
        ended = {e.ref for e in self.dc.mobility.effects("mobility.end_rental")} | {
            e.ref for e in self.echo_mobility.effects("mobility.end_rental")
        }
        stuck = [r for r in self.rentals if r not in ended]
        logged_out, back_on = self.after_the_fire()
        health = self.app.health()
        checks = {
            "outbox drained": drained and health.outbox_depth == 0 and health.dead_letters == 0,
            "no payment made twice": not double_charged,
            "every accepted charge made": not uncharged,
            "no message lost": not lost,
            "no message sent twice": not duplicated,
            "no user logged out": not logged_out,
            "no rider stuck in a rental": not stuck,
            "back on Kakao": not [c for c, p in back_on.items() if not p.startswith("kakao.")],
        }
        return {
            "phases": [p.summary() for p in phases],
            "events": self.events,
            "checks": checks,
            "double_charged": double_charged,
            "lost_messages": lost,
            "stuck_rentals": stuck,
            "served_after": back_on,
            "logged_out": logged_out,
            "dead_letters": health.dead_letters,
        }

    def after_the_fire(self) -> tuple[list[str], dict[str, str]]:
        """Ask the app once more, now that the fire is out: whether the user's session
        still refreshes (from Kakao, no longer a grace session), and who serves each
        capability."""
        logged_out: list[str] = []
        served: dict[str, str] = {}
        try:
            session = self.app.identity.refresh(self.session_id)
            served["identity"] = session.provider or session.via.value
            if session.value.grace:
                logged_out.append(f"{self.session_id}: still on grace")
        except SuperAppError as exc:
            logged_out.append(f"{self.session_id}: {type(exc).__name__}")
        calls: dict[str, Any] = {
            "chat": lambda: self.app.chat.send(to=USER, text="after the fire", defer=False),
            "payment": lambda: self.app.payment.charge(
                order_id="order-after", amount=1_000, user_id=USER
            ),
            "mobility": lambda: self.app.mobility.estimate(origin=ROUTE[0], destination=ROUTE[1]),
        }
        for capability, call in calls.items():
            try:
                out = call()
                served[capability] = out.provider or out.via.value
            except SuperAppError as exc:
                served[capability] = type(exc).__name__
        return logged_out, served


def _print_report(report: dict[str, Any], say: Any) -> None:
    say("\nWhat happened")
    for event in report["events"]:
        say(f"  {event}")
    say("\nPer phase")
    say(f"  {'phase':<17}{'calls':>6}  {'full-timeout waits':>18}  {'p50 ms':>8}  via / errors")
    for p in report["phases"]:
        via = ", ".join(f"{k} {v}" for k, v in sorted(p["via"].items()))
        errs = ", ".join(f"{k} {v}" for k, v in sorted(p["errors"].items()))
        p50 = f"{p['p50_ms']:.1f}" if p["p50_ms"] is not None else "-"
        say(
            f"  {p['phase']:<17}{p['calls']:>6}  {p['full_timeout_waits']:>18}  {p50:>8}  "
            f"{via}{' | ' + errs if errs else ''}"
        )
    say("\nPromises")
    for name, ok in report["checks"].items():
        say(f"  [{'ok' if ok else 'FAILED'}] {name}")


def main(args: argparse.Namespace | None = None) -> int:
    """Run the drill; exit status 0 when every promise held."""
    if args is None:
        parser = argparse.ArgumentParser(prog="superapp drill")
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--json", default=None)
        args = parser.parse_args()
    rounds = 2 if args.quick else 4
    print("superapp-sdk fire drill: a simulated Kakao data center burns mid-traffic")
    with tempfile.TemporaryDirectory(prefix="superapp-drill-") as tmp:
        drill = Drill(Path(tmp) / "state", rounds=rounds, say=print)
        try:
            report = drill.run()
        finally:
            drill.close()
    _print_report(report, print)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
