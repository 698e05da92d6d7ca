"""Simulated KakaoTalk Message API (send to friends with a default template).

Faithful to Kakao Developers, "Kakao Talk Message: REST API" and its error codes:
``POST /v1/api/talk/friends/message/default/send`` on kapi, ``Authorization: Bearer``
of the sending user, form fields ``receiver_uuids`` (JSON array, 1 to 5 uuids) and
``template_object`` (JSON), answers ``{"successful_receiver_uuids": [...]}`` plus
``failure_info`` for partial failures, errors as ``{"msg", "code"}``.

Every delivered message is recorded; tests read them with :meth:`ChatState.deliveries`,
or as :class:`~superapp_sdk.testing.kakao.Effect` records with :meth:`ChatState.effects`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.testing.kakao._asgi import Request, Response, Route, json_response
from superapp_sdk.testing.kakao._effects import Effect, EffectLog

__all__ = ["ChatState", "Delivery", "routes"]

SEND_PATH = "/kapi/v1/api/talk/friends/message/default/send"
MAX_RECEIVERS = 5
MAX_TEXT = 200  # the text template's documented limit


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message delivered to one receiver."""

    sender: str
    receiver_uuid: str
    text: str
    template: dict[str, Any]
    at: float


@dataclass(slots=True)
class _Account:
    user: str
    friends: set[str] = field(default_factory=set)
    sent_today: int = 0


class ChatState:
    """Sending accounts (by access token), their friends, and every delivery.

    Args:
        clock: time for delivery records.
        daily_quota: messages one sender may send per day before -532 (``None``: no cap).
    """

    def __init__(self, *, clock: Clock | None = None, daily_quota: int | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.daily_quota = daily_quota
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._refusing: set[str] = set()
        self._deliveries: list[Delivery] = []
        self._effects = EffectLog()

    def add_account(self, access_token: str, *, user: str, friends: Iterable[str] = ()) -> None:
        """A sending account: its access token, its user id, and its friends' uuids."""
        with self._lock:
            self._accounts[access_token] = _Account(user=user, friends=set(friends))

    def add_friend(self, access_token: str, uuid: str) -> None:
        """Make ``uuid`` a friend of the account behind ``access_token``."""
        with self._lock:
            self._accounts[access_token].friends.add(uuid)

    def refuse_messages(self, uuid: str) -> None:
        """The receiver ``uuid`` turns message reception off (-530)."""
        with self._lock:
            self._refusing.add(uuid)

    def revoke(self, access_token: str) -> None:
        """Invalidate a sender's access token."""
        with self._lock:
            self._accounts.pop(access_token, None)

    def deliveries(self, *, to: str | None = None) -> list[Delivery]:
        """Every delivered message, oldest first (only those to ``to`` when given)."""
        with self._lock:
            return [d for d in self._deliveries if to is None or d.receiver_uuid == to]

    def effects(
        self, kind: str | None = None, *, order_id: str | None = None, key: str | None = None
    ) -> tuple[Effect, ...]:
        """Every delivery as a ``"chat.send"`` effect (one per receiver), oldest first;
        only those of ``kind``, ``order_id`` and ``key`` when given.

        ``to`` is the receiver's uuid, ``text`` the template's text, ``key`` the
        request's ``Idempotency-Key`` header (KakaoTalk defines none: ``None``).
        """
        return self._effects.effects(kind, order_id=order_id, key=key)

    def _failure(self, account: _Account, uuid: str) -> tuple[int, str] | None:
        if uuid not in account.friends:
            return -502, "given receiver is not friend with this user"
        if uuid in self._refusing:
            return -530, "receiver turned off message reception"
        if self.daily_quota is not None and account.sent_today >= self.daily_quota:
            return -532, "daily message limit per sender exceeded"
        return None

    def send_endpoint(self, request: Request) -> Response:
        """``POST /v1/api/talk/friends/message/default/send``."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return json_response({"msg": "no authentication key!", "code": -401}, status=401)
        with self._lock:
            account = self._accounts.get(token)
        if account is None:
            return json_response(
                {"msg": "this access token does not exist", "code": -401}, status=401
            )
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return _invalid("request body must be application/x-www-form-urlencoded")
        form = request.form()
        try:
            receivers = json.loads(form["receiver_uuids"])
        except (KeyError, ValueError):
            return _invalid(
                "Constraints on the parameter [receiver_uuids] are unsatisfied. "
                "The input receiver id(s) is invalid format."
            )
        if (
            not isinstance(receivers, list)
            or not 1 <= len(receivers) <= MAX_RECEIVERS
            or not all(isinstance(r, str) and r for r in receivers)
        ):
            return _invalid(
                "Constraints on the parameter [receiver_uuids] are unsatisfied. "
                "The input receiver id(s) is invalid format."
            )
        try:
            template = json.loads(form["template_object"])
        except (KeyError, ValueError):
            return _invalid("template_object is missing or not JSON")
        if (
            not isinstance(template, dict)
            or template.get("object_type") != "text"
            or not isinstance(template.get("text"), str)
            or not isinstance(template.get("link"), dict)
        ):
            return _invalid("template_object must be a text template with text and link")
        text = template["text"]
        if len(text) > MAX_TEXT:
            return _invalid(f"text of a text template must be at most {MAX_TEXT} characters")

        now = self.clock.time()
        successful: list[str] = []
        failures: dict[tuple[int, str], list[str]] = {}
        with self._lock:
            for uuid in receivers:
                failure = self._failure(account, uuid)
                if failure is None:
                    account.sent_today += 1
                    successful.append(uuid)
                    self._deliveries.append(Delivery(account.user, uuid, text, template, now))
                    self._effects.record(
                        Effect(
                            "chat.send",
                            now,
                            key=request.headers.get("idempotency-key"),
                            to=uuid,
                            text=text,
                        )
                    )
                else:
                    failures.setdefault(failure, []).append(uuid)
        if not successful:
            (code, msg), _uuids = next(iter(failures.items()))
            return json_response({"msg": msg, "code": code}, status=400)
        answer: dict[str, Any] = {"successful_receiver_uuids": successful}
        if failures:
            answer["failure_info"] = [
                {"code": code, "msg": msg, "receiver_uuids": uuids}
                for (code, msg), uuids in failures.items()
            ]
        return json_response(answer)


def _invalid(message: str) -> Response:
    return json_response({"msg": message, "code": -2}, status=400)


def routes(state: ChatState) -> list[Route]:
    """The simulated KakaoTalk Message routes, bound to ``state``."""
    return [Route("POST", SEND_PATH, state.send_endpoint, "chat", write=True)]
