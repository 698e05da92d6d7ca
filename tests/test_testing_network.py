"""Loopback network faults, network-namespace blackholes and the uvicorn test server."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest

from superapp_sdk.testing._network import (
    BlackholeEnv,
    FullBacklogListener,
    HangingServer,
    NetnsBlackhole,
    NetnsError,
    RefusingAddress,
    netns_available,
    run_in_netns,
)
from superapp_sdk.testing._servers import UvicornServer, echo_app

TIMEOUT = 0.2
# Generous upper bound for "fired at its timeout, not much later" on a loaded CI machine.
LATE = 10 * TIMEOUT


def _elapsed_error(url: str, timeout: httpx.Timeout | float) -> tuple[type[Exception], float]:
    start = time.perf_counter()
    with httpx.Client(timeout=timeout) as client:
        try:
            client.get(url)
        except httpx.RequestError as exc:
            return type(exc), time.perf_counter() - start
    raise AssertionError(f"{url} answered")


# ------------------------------------------------------------------ HangingServer


@pytest.mark.network
def test_hanging_server_makes_request_hit_read_timeout() -> None:
    """A request to HangingServer connects, then raises ReadTimeout at the read timeout."""
    with HangingServer() as server:
        kind, elapsed = _elapsed_error(server.url, TIMEOUT)
        assert server.connections == 1
    assert kind is httpx.ReadTimeout
    assert TIMEOUT <= elapsed < LATE


@pytest.mark.network
async def test_hanging_server_with_async_client() -> None:
    """An AsyncClient also gets ReadTimeout from HangingServer."""
    with HangingServer() as server:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(server.url)


@pytest.mark.network
def test_hanging_server_closes_connections_on_exit() -> None:
    """Leaving the block closes accepted connections: the client then reads EOF."""
    with socket.socket() as client:
        client.settimeout(5.0)
        with HangingServer() as server:
            # Nothing is sent: unread data would turn the server's FIN into a RST.
            client.connect(server.address)
            assert server.wait_connections(1, timeout=5.0)
        assert client.recv(1) == b""


def test_address_before_start_is_an_error() -> None:
    """Asking a fault for its address outside the with block raises RuntimeError."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = HangingServer().url


# ------------------------------------------------------------ FullBacklogListener


@pytest.mark.network
def test_full_backlog_makes_connect_time_out() -> None:
    """A new connection to a full accept queue raises ConnectTimeout at the connect timeout."""
    with FullBacklogListener() as listener:
        assert listener.filled >= 2
        kind, elapsed = _elapsed_error(listener.url, httpx.Timeout(5.0, connect=TIMEOUT))
    assert kind is httpx.ConnectTimeout
    assert TIMEOUT <= elapsed < LATE


@pytest.mark.network
def test_full_backlog_releases_its_clients() -> None:
    """Leaving the block closes the listener and the clients that filled it."""
    with FullBacklogListener() as listener:
        address = listener.address
    assert listener.filled == 0
    kind, _ = _elapsed_error(f"http://{address[0]}:{address[1]}", 2.0)
    assert kind is httpx.ConnectError


def test_full_backlog_validates_backlog() -> None:
    """Only a backlog of 0 or 1 is accepted."""
    with pytest.raises(ValueError, match="backlog"):
        FullBacklogListener(backlog=5)


# --------------------------------------------------------------- RefusingAddress


@pytest.mark.network
def test_refusing_address_fails_fast_with_connect_error() -> None:
    """A connect to RefusingAddress is refused at once: ConnectError, long before timeout."""
    with RefusingAddress() as address:
        kind, elapsed = _elapsed_error(address.url, 5.0)
    assert kind is httpx.ConnectError
    assert elapsed < 1.0


# ------------------------------------------------------------------ UvicornServer


@pytest.mark.network
def test_uvicorn_serves_echo_app_on_loopback() -> None:
    """UvicornServer serves echo_app over a real socket on a free port."""
    with UvicornServer(echo_app) as server, httpx.Client(base_url=server.url) as client:
        assert server.port > 0
        got = client.get("/v1/ping")
        posted = client.post("/v1/orders", json={"id": 1})
        deleted = client.delete("/v1/orders/1")
    assert got.json() == {"ok": True, "method": "GET", "path": "/v1/ping"}
    assert posted.json() == {"ok": True, "method": "POST", "path": "/v1/orders"}
    assert deleted.status_code == 405


@pytest.mark.network
def test_uvicorn_server_stops_listening_on_exit() -> None:
    """After the with block the port no longer accepts connections."""
    with UvicornServer(echo_app) as server:
        url = server.url
    kind, _ = _elapsed_error(url, 2.0)
    assert kind is httpx.ConnectError


async def _failing_app(scope: object, receive: object, send: object) -> None:
    raise RuntimeError("startup failed")


@pytest.mark.network
def test_uvicorn_startup_failure_raises() -> None:
    """An app whose lifespan startup fails makes start() raise RuntimeError."""
    server = UvicornServer(_failing_app, lifespan="on", startup_timeout=5.0)
    with pytest.raises(RuntimeError, match="failed to start"):
        server.start()
    assert repr(server).endswith("not started)")


def test_uvicorn_server_port_before_start_is_an_error() -> None:
    """The port is unknown until the server starts."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = UvicornServer(echo_app).port


async def test_echo_app_answers_through_asgi_transport() -> None:
    """echo_app is a plain ASGI app: it answers through httpx's ASGITransport too."""
    transport = httpx.ASGITransport(app=echo_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/x/y", content=b"z" * 10)
    assert response.json() == {"ok": True, "method": "POST", "path": "/x/y"}


# ------------------------------------------------------------- network namespaces


@pytest.fixture
def netns_ready() -> None:
    """Skip, printing why, where a private user + network namespace cannot be made."""
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)


def probe_blackhole(env: BlackholeEnv, timeout: float) -> dict[str, object]:
    """Runs inside the namespace: what a client sees on each port."""
    result: dict[str, object] = {}
    with httpx.Client(timeout=timeout) as client:
        result["open"] = client.get(env.open_url).json()
        start = time.perf_counter()
        try:
            client.get(env.blackhole_url)
        except httpx.RequestError as exc:
            result["blackhole"] = type(exc).__name__
        else:
            result["blackhole"] = "answered"
        result["elapsed"] = time.perf_counter() - start
    return result


def fail_inside(env: BlackholeEnv) -> None:
    """Runs inside the namespace and fails."""
    raise RuntimeError(f"failing on purpose near port {env.open_port}")


def test_netns_available_reports_a_reason() -> None:
    """netns_available() answers (True, '') or (False, a reason)."""
    ok, reason = netns_available()
    assert isinstance(ok, bool)
    assert (reason == "") if ok else reason


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_blackholed_port_times_out_while_open_port_answers() -> None:
    """Inside the namespace a dropped port's connect times out; the other port answers."""
    result = NetnsBlackhole(timeout=60).call(probe_blackhole, TIMEOUT)
    assert result["open"] == {"ok": True}
    assert result["blackhole"] == "ConnectTimeout"
    elapsed = result["elapsed"]
    assert isinstance(elapsed, float)
    assert TIMEOUT <= elapsed < LATE


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_reject_action_refuses_at_once() -> None:
    """With action='reject with tcp reset' the blackholed port refuses instead of hanging."""
    result = NetnsBlackhole(action="reject with tcp reset").call(probe_blackhole, 5.0)
    assert result["blackhole"] == "ConnectError"
    elapsed = result["elapsed"]
    assert isinstance(elapsed, float)
    assert elapsed < 1.0


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_blackhole_run_exposes_ports_as_globals() -> None:
    """NetnsBlackhole.run gives the code BLACKHOLE_PORT and OPEN_URL."""
    done = NetnsBlackhole().run(
        "import httpx\nprint(BLACKHOLE_PORT != OPEN_PORT, httpx.get(OPEN_URL).status_code)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "200"]


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_netns_has_only_its_own_loopback() -> None:
    """The namespace has just 'lo', up, and cannot reach a server on the host's loopback."""
    with HangingServer() as host_server:
        code = (
            "import socket, sys\n"
            "print([name for _, name in socket.if_nameindex()])\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()\n"
            "    print('reached')\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n"
        )
        done = run_in_netns(code, timeout=30, args=[str(host_server.port)])
        assert host_server.connections == 0
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['lo']", "refused"]


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_run_in_netns_kills_code_that_outlives_its_timeout() -> None:
    """run_in_netns raises TimeoutExpired once the timeout passes."""
    start = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_netns("import time\ntime.sleep(30)", timeout=0.5)
    assert time.perf_counter() - start < 10


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ready")
def test_call_reports_failures_with_stderr() -> None:
    """A function that raises inside the namespace surfaces as NetnsError with its traceback."""
    with pytest.raises(NetnsError, match="failing on purpose") as info:
        NetnsBlackhole().call(fail_inside)
    assert info.value.returncode == 1


def test_call_refuses_functions_not_importable_by_name() -> None:
    """Lambdas and nested functions cannot travel into the namespace."""
    with pytest.raises(ValueError, match="module-level"):
        NetnsBlackhole().call(lambda env: None)


def test_blackhole_validates_options() -> None:
    """NetnsBlackhole checks its timeout and action."""
    with pytest.raises(ValueError, match="timeout"):
        NetnsBlackhole(timeout=0)
    with pytest.raises(ValueError, match="action"):
        NetnsBlackhole(action="accept")
