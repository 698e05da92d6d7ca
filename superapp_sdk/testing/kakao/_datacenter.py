"""The simulated Kakao data center: every Kakao API the SDK uses, in one app you can burn.

:class:`KakaoDataCenter` composes the four simulators (Kakao Login, KakaoTalk Message,
KakaoPay, Kakao Mobility) into one ASGI app, seeded with a usable demo setup, and holds
the fire controls that make one service, or all of them, fail at the HTTP level.
:class:`DataCenterServer` runs it on a real loopback uvicorn server behind one
:class:`~superapp_sdk.testing._proxy.FaultProxy` per capability, so socket-level faults
(refuse, accept and hang, reset) hit one service at a time::

    dc = KakaoDataCenter()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dc.app)) as client:
        kakao = dc.adapters("http://kakao.sim")
        ...
    with DataCenterServer(dc) as server, httpx.Client() as client:
        kakao = server.adapters()
        server.burn(Burn.HANG, ["chat"])      # KakaoTalk accepts and never answers
        server.burn(Fire.ERROR_5XX, ["payment"])  # KakaoPay answers 503
        server.restore()

"Apply then lose": ``Fire.APPLY_500`` and ``Fire.APPLY_LATE`` (in the app) and
``Burn.LOSE_RESET`` and ``Burn.LOSE_HANG`` (at a proxy) let the service execute a write and
lose its answer; ``lose_next`` loses only the next few::

    dc.lose_next("payment", Fire.APPLY_500)           # the next KakaoPay write runs, 500s
    server.lose_next("chat", Burn.LOSE_RESET, count=2)  # two sends delivered, then reset
    assert len(dc.payment.effects("payment.charge")) == 1
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from superapp_sdk.capabilities._common import Capability
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.providers.kakao import KakaoLogin, KakaoMobility, KakaoPay, KakaoTalk
from superapp_sdk.testing._proxy import Burn, FaultProxy
from superapp_sdk.testing._servers import UvicornServer
from superapp_sdk.testing.kakao import chat, identity, mobility, payment
from superapp_sdk.testing.kakao._asgi import App, Fire, FireControl

__all__ = [
    "CAPABILITIES",
    "DataCenterCredentials",
    "DataCenterServer",
    "KakaoAdapters",
    "KakaoDataCenter",
]

#: The capabilities the data center serves, in the order its proxies start.
CAPABILITIES: tuple[str, ...] = ("identity", "chat", "payment", "mobility")


def _capabilities(capabilities: Iterable[str | Capability]) -> tuple[str, ...]:
    """Names of ``capabilities`` (all four when empty); ValueError for an unknown one."""
    if isinstance(capabilities, str | Capability):
        capabilities = (capabilities,)
    names = tuple(c.value if isinstance(c, Capability) else c for c in capabilities)
    for name in names:
        if name not in CAPABILITIES:
            raise ValueError(f"capabilities must name some of {CAPABILITIES}, got {name!r}")
    return names or CAPABILITIES


@dataclass(frozen=True, slots=True, repr=False)
class DataCenterCredentials:
    """The demo setup a :class:`KakaoDataCenter` is seeded with. ``repr`` hides secrets.

    Attributes:
        client_id: the Kakao Login client (the app's REST API key; ``aud`` of ID tokens).
        client_secret: that client's secret.
        redirect_uri: the redirect URI registered for that client.
        subject: the Kakao member number of the seeded user (logged in at the browser).
        nickname: that user's nickname.
        email: that user's e-mail address.
        talk_access_token: the access token of the KakaoTalk account that sends messages.
        friend_uuids: uuids of that account's friends (valid message recipients).
        pay_secret_key: the KakaoPay open API secret key.
        pay_cid: the KakaoPay merchant code for one-time payments.
        pay_subscription_cid: the KakaoPay merchant code for subscription payments.
        pay_user_id: the app-level user id holding a KakaoPay billing key.
        billing_key: that user's KakaoPay ``sid``, for server-side charges.
        mobility_rest_api_key: the REST API key Kakao Mobility takes as ``KakaoAK``.
    """

    client_id: str
    client_secret: str
    redirect_uri: str
    subject: str
    nickname: str
    email: str
    talk_access_token: str
    friend_uuids: tuple[str, ...]
    pay_secret_key: str
    pay_cid: str
    pay_subscription_cid: str
    pay_user_id: str
    billing_key: str
    mobility_rest_api_key: str

    def __repr__(self) -> str:
        return (
            f"DataCenterCredentials(client_id={self.client_id!r}, subject={self.subject!r}, "
            f"friend_uuids={self.friend_uuids!r}, pay_user_id={self.pay_user_id!r}, "
            "secrets='***')"
        )


@dataclass(frozen=True, slots=True)
class KakaoAdapters:
    """The four Kakao adapters, configured for one simulated data center."""

    login: KakaoLogin
    talk: KakaoTalk
    pay: KakaoPay
    mobility: KakaoMobility


class KakaoDataCenter:
    """The four Kakao simulators as one ASGI app, seeded and ready to burn.

    The state objects are public so a test can inspect or steer each service
    (``dc.payment.decline(user_id=...)``, ``dc.chat.deliveries()``,
    ``dc.mobility.start_rental(...)``, ``dc.identity.rotate_keys()``).

    Args:
        clock: time for every simulator (tokens, payments, rentals); the system clock
            when not given.
        rng: randomness for tokens and key ids.
        slow_seconds: delay of a service burning in ``Fire.SLOW`` (> 0).
        hang_seconds: how long a service burning in ``Fire.HANG`` holds each request
            before answering (> 0).

    Attributes:
        identity: the Kakao Login state.
        chat: the KakaoTalk Message state.
        payment: the KakaoPay state.
        mobility: the Kakao Mobility state.
        fire: the per-capability fire switches the app obeys.
        app: the composed ASGI app (paths prefixed ``/kauth``, ``/kapi``, ``/pay``,
            ``/mobility``).
        credentials: the seeded demo setup.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        slow_seconds: float = 2.0,
        hang_seconds: float = 30.0,
    ) -> None:
        for name, value in (("slow_seconds", slow_seconds), ("hang_seconds", hang_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.clock: Clock = clock or SystemClock()
        secret_key = "sim-kakaopay-secret"  # noqa: S105 - a simulator's public test secret
        self.identity = identity.IdentityState(clock=self.clock, rng=rng)
        self.chat = chat.ChatState(clock=self.clock)
        self.payment = payment.PaymentState(secret_key=secret_key, clock=self.clock)
        self.mobility = mobility.MobilityState(rest_api_key="sim-kakao-rest-key", clock=self.clock)
        self.fire = FireControl(slow_seconds=slow_seconds, hang_seconds=hang_seconds)
        self.app = App(
            identity.routes(self.identity)
            + chat.routes(self.chat)
            + payment.routes(self.payment)
            + mobility.routes(self.mobility),
            self.fire,
        )
        self.credentials = self._seed(secret_key)

    def _seed(self, pay_secret_key: str) -> DataCenterCredentials:
        client_id, client_secret = "sim-login-rest-key", "sim-login-secret"
        redirect_uri = "https://app.example/login/kakao/callback"
        subject, nickname, email = "3141592653", "Kim Minji", "minji@example.com"
        self.identity.register_client(
            client_id, client_secret=client_secret, redirect_uris=[redirect_uri]
        )
        self.identity.add_user(subject, nickname=nickname, email=email)
        talk_token = "sim-talk-access-token"  # noqa: S105 - a simulator's public test token
        friends = ("friend-uuid-lee", "friend-uuid-park", "friend-uuid-choi")
        self.chat.add_account(talk_token, user=subject, friends=friends)
        pay_user_id = "user-minji"
        billing_key = self.payment.issue_sid(pay_user_id)
        return DataCenterCredentials(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            subject=subject,
            nickname=nickname,
            email=email,
            talk_access_token=talk_token,
            friend_uuids=friends,
            pay_secret_key=pay_secret_key,
            pay_cid=min(self.payment.cids),
            pay_subscription_cid=min(self.payment.subscription_cids),
            pay_user_id=pay_user_id,
            billing_key=billing_key,
            mobility_rest_api_key=self.mobility.rest_api_key,
        )

    def burn(
        self,
        mode: Fire = Fire.ERROR_5XX,
        capabilities: Iterable[str | Capability] = (),
    ) -> None:
        """Set the listed capabilities (all four when none is given) on fire.

        ``Fire.ERROR_5XX`` answers an HTML 503 page, ``Fire.SLOW`` answers after
        ``slow_seconds``, ``Fire.HANG`` holds each request ``hang_seconds``;
        ``Fire.APPLY_500`` executes every write and answers an HTML 500 page instead of its
        answer, ``Fire.APPLY_LATE`` executes every write and answers after
        ``slow_seconds`` (reads are served normally in both).

        Raises:
            ValueError: an unknown capability name.
        """
        if not isinstance(mode, Fire):
            raise ValueError(f"mode must be a Fire mode, got {mode!r}")
        self.fire.burn(mode, _capabilities(capabilities))

    def lose_next(self, capability: str | Capability, mode: Fire, *, count: int = 1) -> None:
        """Execute the next ``count`` writes to ``capability`` and lose their answers in
        ``mode`` (``Fire.APPLY_500`` or ``Fire.APPLY_LATE``); the writes after them, and
        every read, are served as the service's steady mode says. See
        :meth:`FireControl.lose_next`.

        Raises:
            ValueError: an unknown capability, a mode that is not ``APPLY_``, count < 1.
        """
        (name,) = _capabilities((capability,))
        self.fire.lose_next(name, mode, count=count)

    def restore(self) -> None:
        """Put out every fire: all four services answer normally again, and no answer is
        owed to :meth:`lose_next` any more."""
        self.fire.restore()

    def issue_code(self, *, nonce: str | None = None) -> str:
        """An authorization code for the seeded user, as the browser would bring back.

        It is bound to the seeded client and redirect URI and carries ``nonce`` into
        the ID token.
        """
        creds = self.credentials
        return self.identity.issue_code(
            creds.subject, nonce, creds.redirect_uri, creds.client_id, scopes=("openid",)
        )

    def adapters(self, base_url: str) -> KakaoAdapters:
        """The four Kakao adapters pointed at this data center served at ``base_url``.

        ``base_url`` is where :attr:`app` is reachable (``"http://kakao.sim"`` for an
        ``httpx.ASGITransport``, a loopback URL for a server).
        """
        return _wire(self, base_url, base_url, base_url, base_url)

    def __repr__(self) -> str:
        fires = {c: self.fire.mode(c).value for c in CAPABILITIES}
        return f"KakaoDataCenter(fire={fires})"


def _wire(
    dc: KakaoDataCenter, identity_url: str, chat_url: str, pay_url: str, mobility_url: str
) -> KakaoAdapters:
    """The four adapters with the seeded credentials, each at its service's base URL."""
    creds = dc.credentials
    return KakaoAdapters(
        login=KakaoLogin(
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            redirect_uri=creds.redirect_uri,
            scopes=("openid", "account_email", "profile_nickname"),
            auth_base_url=f"{identity_url.rstrip('/')}/kauth",
            api_base_url=f"{identity_url.rstrip('/')}/kapi",
            issuer=dc.identity.issuer,
        ),
        talk=KakaoTalk(
            access_token=creds.talk_access_token,
            api_base_url=f"{chat_url.rstrip('/')}/kapi",
            clock=dc.clock,
        ),
        pay=KakaoPay(
            secret_key=creds.pay_secret_key,
            cid=creds.pay_cid,
            subscription_cid=creds.pay_subscription_cid,
            pay_base_url=f"{pay_url.rstrip('/')}/pay",
        ),
        mobility=KakaoMobility(
            rest_api_key=creds.mobility_rest_api_key,
            mobility_base_url=f"{mobility_url.rstrip('/')}/mobility",
        ),
    )


class DataCenterServer:
    """A :class:`KakaoDataCenter` on a real loopback server, one fault proxy per service.

    Entering the ``with`` block starts uvicorn on a free loopback port and, in front of
    it, one :class:`~superapp_sdk.testing._proxy.FaultProxy` per capability; leaving it
    stops the proxies (closing every connection) and then the server. Adapters from
    :meth:`adapters` reach each service through its own proxy, so a socket-level fault on
    one proxy is an outage of that service alone.

    Args:
        dc: the data center to serve.
        host: the loopback address to bind.
        shutdown_timeout: seconds (> 0) to wait for uvicorn to stop; requests still held
            by ``Fire.HANG`` are cancelled after half of it.

    Example::

        with DataCenterServer(KakaoDataCenter()) as server, httpx.Client() as client:
            kakao = server.adapters()
            server.burn(Burn.REFUSE, ["payment"])   # KakaoPay refuses connections
    """

    def __init__(
        self, dc: KakaoDataCenter, *, host: str = "127.0.0.1", shutdown_timeout: float = 10.0
    ) -> None:
        self.dc = dc
        self._server = UvicornServer(dc.app, host, shutdown_timeout=shutdown_timeout)
        self._proxies: dict[str, FaultProxy] = {}

    @property
    def url(self) -> str:
        """The server's own URL, behind no proxy (no socket fault reaches it)."""
        return self._server.url

    def proxy(self, capability: str | Capability) -> FaultProxy:
        """The fault proxy in front of ``capability``'s service."""
        (name,) = _capabilities((capability,))
        try:
            return self._proxies[name]
        except KeyError:
            raise RuntimeError("DataCenterServer is not started (use it in a with block)") from None

    def url_for(self, capability: str | Capability) -> str:
        """``http://127.0.0.1:port`` of the proxy in front of ``capability``'s service."""
        return self.proxy(capability).url

    def adapters(self) -> KakaoAdapters:
        """The four Kakao adapters, each reaching its service through its own proxy.

        Kakao Login uses kauth and kapi; both go through the identity proxy.
        """
        return _wire(
            self.dc,
            self.url_for("identity"),
            self.url_for("chat"),
            self.url_for("payment"),
            self.url_for("mobility"),
        )

    def burn(self, mode: Burn | Fire, capabilities: Iterable[str | Capability] = ()) -> None:
        """Set the listed services (all four when none is given) on fire.

        A :class:`~superapp_sdk.testing._proxy.Burn` mode acts on the sockets, at the
        proxies: ``HANG`` accepts and never answers (open connections go silent too),
        ``REFUSE`` refuses connections, ``RESET`` resets them, ``LOSE_RESET`` delivers
        each request and resets the connection as its answer starts, ``LOSE_HANG``
        delivers each request and never passes its answer on, ``PASS`` lets traffic
        through again. A :class:`~superapp_sdk.testing.kakao.Fire` mode acts on HTTP, in
        the app: ``ERROR_5XX``, ``SLOW``, ``HANG``, ``APPLY_500``, ``APPLY_LATE``,
        ``NORMAL``.
        """
        names = _capabilities(capabilities)
        if isinstance(mode, Fire):
            self.dc.burn(mode, names)
            return
        if not isinstance(mode, Burn):
            raise ValueError(f"mode must be a Burn or Fire mode, got {mode!r}")
        for name in names:
            self.proxy(name).set(mode)

    def lose_next(self, capability: str | Capability, mode: Burn | Fire, *, count: int = 1) -> None:
        """Let ``capability``'s service execute the next ``count`` requests and lose their
        answers, then serve normally again.

        With ``Fire.APPLY_500`` or ``Fire.APPLY_LATE`` the app loses the answers of the
        next ``count`` writes (reads pass); with ``Burn.LOSE_RESET`` or ``Burn.LOSE_HANG``
        the proxy loses the next ``count`` answers of any request, one per connection,
        and then passes traffic again.

        Raises:
            ValueError: an unknown capability, a mode that loses no answer, count < 1.
        """
        if isinstance(mode, Fire):
            self.dc.lose_next(capability, mode, count=count)
            return
        if mode not in (Burn.LOSE_RESET, Burn.LOSE_HANG):
            raise ValueError(
                f"mode must be Burn.LOSE_RESET, Burn.LOSE_HANG or an APPLY_ Fire mode, got {mode!r}"
            )
        self.proxy(capability).set(mode, count=count)

    def restore(self) -> None:
        """Every proxy passes traffic and every service answers normally again."""
        for proxy in self._proxies.values():
            proxy.set(Burn.PASS)
        self.dc.restore()

    def start(self) -> None:
        """Start the server, then the proxies; returns once all of them listen."""
        if self._proxies:
            return
        self._server.start()
        try:
            for name in CAPABILITIES:
                proxy = FaultProxy(self._server.port, host=self._server.host)
                proxy.start()
                self._proxies[name] = proxy
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the proxies (closing every connection), then the server."""
        proxies, self._proxies = self._proxies, {}
        try:
            for proxy in proxies.values():
                proxy.stop()
        finally:
            self._server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self._proxies:
            return "DataCenterServer(not started)"
        modes = {name: proxy.mode.value for name, proxy in self._proxies.items()}
        return f"DataCenterServer({self.url}, proxies={modes})"
