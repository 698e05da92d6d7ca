"""KakaoTalk Message API: send a text message to a KakaoTalk friend.

Follows Kakao Developers, "Kakao Talk Message: REST API"
(https://developers.kakao.com/docs/latest/en/message/rest-api), section "Send to
friends" with a default template, and "Kakao Talk Message: Error code"
(https://developers.kakao.com/docs/latest/en/kakaotalk-message/trouble-shooting):

- ``POST kapi.kakao.com/v1/api/talk/friends/message/default/send`` with
  ``Authorization: Bearer {access_token}`` of the *sending* user, form encoded:
  ``receiver_uuids`` (a JSON array of friend uuids, at most 5) and ``template_object``
  (a JSON text template: ``object_type="text"``, ``text``, ``link``).
- Success: ``{"successful_receiver_uuids": [...]}``, with ``failure_info``
  (``[{"code", "msg", "receiver_uuids"}]``) for receivers that failed.
- Errors: ``{"msg", "code"}``. -502: the receiver is not the sender's friend; -530: the
  receiver refuses messages; -2 on ``receiver_uuids``: not a uuid this app may message;
  -531/-532/-533/-536: a monthly or daily quota (sender, receiver or pair) is spent;
  -401: bad access token; -402: the user has not consented to ``talk_message``.

Kakao does **not** deduplicate by idempotency key and returns no message id: a retry
after a lost answer may deliver twice. That is why the outbox persists the key before the
first send and why the receipt's ``message_id`` is derived from the key. KakaoTalk has no
message history API, so ``operations`` omits ``"chat.history"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx

from superapp_sdk._errors import Declined, ProviderError, RateLimited, SuperAppError
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.capabilities.chat import Message, MessageReceipt
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.providers._http import Flow, field, json_object, read_json, status_error

__all__ = ["KakaoTalk"]

_SEND_PATH = "/v1/api/talk/friends/message/default/send"
_FORM = "application/x-www-form-urlencoded;charset=utf-8"
_UNKNOWN_RECIPIENT = frozenset({-502})
_REFUSES = frozenset({-530})
_QUOTA = frozenset({-531, -532, -533, -536})


class KakaoTalk:
    """KakaoTalk as a :class:`~superapp_sdk.capabilities.chat.ChatProvider`.

    Args:
        access_token: the sending account's access token, or a callable returning the
            current one (called once per send, so a refreshed token is picked up).
        api_base_url: the kapi host.
        link_url: the web URL the message's link opens (must be a domain registered for
            the app); ``None`` sends an empty link.
        clock: time for receipts.
        failure_domain: the failure domain shared with every Kakao adapter.
        name: the provider name.
    """

    capability = Capability.CHAT
    operations = frozenset({"chat.send"})
    #: The Message API takes no deduplication key: a resend is a second message.
    deduplicates: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        access_token: str | Callable[[], str],
        api_base_url: str = "https://kapi.kakao.com",
        link_url: str | None = None,
        clock: Clock | None = None,
        failure_domain: str = "kakao",
        name: str = "kakao.talk",
    ) -> None:
        if not access_token:
            raise ValueError("access_token must be a token or a callable returning one")
        self._access_token = access_token
        self.api_base_url = api_base_url.rstrip("/")
        self.link_url = link_url
        self._clock: Clock = clock or SystemClock()
        self.failure_domain = failure_domain
        self.name = name

    def __repr__(self) -> str:
        return f"KakaoTalk(name={self.name!r}, api_base_url={self.api_base_url!r})"

    def _token(self) -> str:
        token = self._access_token() if callable(self._access_token) else self._access_token
        if not isinstance(token, str) or not token:
            raise ValueError("access_token callable returned no token")
        return token

    def _template(self, text: str) -> dict[str, Any]:
        link = {"web_url": self.link_url, "mobile_web_url": self.link_url} if self.link_url else {}
        return {"object_type": "text", "text": text, "link": link}

    def send(
        self, *, to: str, text: str, conversation: str | None = None, idempotency_key: str
    ) -> Flow[MessageReceipt]:
        """Send ``text`` to the friend with uuid ``to``.

        Raises:
            Declined: ``to`` is not a friend, refuses messages, or is unknown to the app
                (``"unknown recipient"``).
            RateLimited: a daily or monthly Kakao quota is spent (another channel may
                still deliver).
            Unauthorized: the access token was refused.
        """
        if not to:
            raise ValueError("to must be a Kakao friend uuid")
        if not idempotency_key:
            raise ValueError("idempotency_key must be a non-empty string")
        operation = "chat.send"
        form = {
            "receiver_uuids": json.dumps([to]),
            "template_object": json.dumps(self._template(text), ensure_ascii=False),
        }
        response = yield httpx.Request(
            "POST",
            f"{self.api_base_url}{_SEND_PATH}",
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Content-Type": _FORM,
                "Accept": "application/json",
            },
            content=urlencode(form).encode("ascii"),
        )
        if not 200 <= response.status_code < 300:
            raise self._error(response, operation)
        data = read_json(response, provider=self.name, operation=operation)
        successful = field(
            data, "successful_receiver_uuids", list, provider=self.name, operation=operation
        )
        if not all(isinstance(uuid, str) for uuid in successful):
            raise self._bad("successful_receiver_uuids holds a non-string", operation)
        if to not in successful:
            raise self._failure_for(data, to, operation, response.status_code)
        return MessageReceipt(
            message_id=f"{self.name}:{idempotency_key}",
            provider=self.name,
            to=to,
            conversation=conversation,
            accepted_at=self._clock.time(),
        )

    def history(self, conversation: str, *, limit: int = 50) -> Flow[list[Message]]:
        """Not offered by Kakao: always raises ``NotImplementedError``.

        ``operations`` omits ``"chat.history"`` so the router never asks for it.
        """
        raise NotImplementedError("KakaoTalk has no message history API")

    def _bad(self, what: str, operation: str) -> SuperAppError:
        return ProviderError(
            f"answer is unusable: {what}",
            provider=self.name,
            operation=operation,
            request_sent=True,
        )

    def _refusal(
        self, code: int, message: str, operation: str, status: int
    ) -> SuperAppError | None:
        common: dict[str, Any] = {
            "provider": self.name,
            "operation": operation,
            "http_status": status,
            "code": str(code),
            "request_sent": True,
        }
        if code in _UNKNOWN_RECIPIENT or (code == -2 and "receiver" in message):
            return Declined(f"unknown recipient: {message}", **common)
        if code in _REFUSES:
            return Declined(f"recipient refuses messages: {message}", **common)
        if code in _QUOTA:
            # A Kakao quota, not a dead recipient: another chat provider may still deliver.
            return RateLimited(f"KakaoTalk quota spent: {message}", **common)
        return None

    def _failure_for(
        self, data: dict[str, Any], to: str, operation: str, status: int
    ) -> SuperAppError:
        failures = data.get("failure_info")
        if isinstance(failures, list):
            for failure in failures:
                if not isinstance(failure, dict):
                    continue
                uuids = failure.get("receiver_uuids")
                code = failure.get("code")
                if (
                    isinstance(uuids, list)
                    and to in uuids
                    and isinstance(code, int)
                    and not isinstance(code, bool)
                ):
                    message = str(failure.get("msg", ""))
                    error = self._refusal(code, message, operation, status)
                    if error is not None:
                        return error
        return Declined(
            "unknown recipient: not among successful_receiver_uuids",
            provider=self.name,
            operation=operation,
            http_status=status,
            request_sent=True,
        )

    def _error(self, response: httpx.Response, operation: str) -> SuperAppError:
        if response.status_code == 429 or response.status_code >= 500:
            return status_error(response, provider=self.name, operation=operation)
        try:
            data = json_object(response, provider=self.name, operation=operation)
        except SuperAppError:
            return status_error(response, provider=self.name, operation=operation)
        code = data.get("code")
        message = data.get("msg") if isinstance(data.get("msg"), str) else None
        if isinstance(code, int) and not isinstance(code, bool):
            refusal = self._refusal(code, message or "", operation, response.status_code)
            if refusal is not None:
                return refusal
            return status_error(
                response,
                provider=self.name,
                operation=operation,
                message=message,
                code=str(code),
            )
        return status_error(response, provider=self.name, operation=operation, message=message)
