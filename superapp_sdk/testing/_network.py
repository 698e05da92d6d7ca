"""Network faults on real loopback sockets, and blackholes inside a private namespace.

Each loopback fault is a context manager with ``.address`` (host, port) and ``.url``::

    with HangingServer() as server:
        httpx.get(server.url, timeout=0.2)      # raises httpx.ReadTimeout after ~0.2 s
    with FullBacklogListener() as listener:
        httpx.get(listener.url, timeout=0.2)    # raises httpx.ConnectTimeout
    with RefusingAddress() as address:
        httpx.get(address.url)                  # raises httpx.ConnectError at once

A blackhole that drops packets (what a data center on fire looks like from outside) needs
a packet filter; :class:`NetnsBlackhole` and :func:`run_in_netns` run code in a private
user + network namespace (``unshare -rn``) where an nftables rule may drop packets without
touching the host.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar, cast

__all__ = [
    "BlackholeEnv",
    "FullBacklogListener",
    "HangingServer",
    "NetnsBlackhole",
    "NetnsError",
    "RefusingAddress",
    "netns_available",
    "run_in_netns",
]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _LoopbackFault:
    """The shared context-manager shape: a bound socket, ``address`` and ``url``."""

    _sock: socket.socket | None

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._sock = None
        self._port = 0

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the fault; valid between ``__enter__`` and ``__exit__``."""
        if self._sock is None:
            raise RuntimeError(f"{type(self).__name__} is not started (use it in a with block)")
        return (self.host, self._port)

    @property
    def port(self) -> int:
        """The port of the fault."""
        return self.address[1]

    @property
    def url(self) -> str:
        """``http://host:port`` of the fault."""
        return _url(*self.address)

    def _bind(self) -> socket.socket:
        sock = socket.socket(_family(self.host), socket.SOCK_STREAM)
        try:
            sock.bind((self.host, 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def start(self) -> None:
        """Bind the socket (``__enter__`` calls this)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release every socket (``__exit__`` calls this); safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._sock is not None else "not started"
        return f"{type(self).__name__}({where})"


class HangingServer(_LoopbackFault):
    """A TCP server that accepts connections and never answers.

    Connections are accepted and kept open, and whatever the client sends is read and
    thrown away, so the client's connect succeeds and its *read* timeout fires
    (``httpx.ReadTimeout``): a server that is up but stuck. A daemon thread does the work;
    leaving the ``with`` block closes the listener and every connection and joins it.

    Connections the thread has not accepted yet when the block ends are reset by the
    kernel (a closed listener answers them with RST); accepted ones are closed (FIN).

    Attributes:
        connections: how many connections were accepted so far.
    """

    def __init__(self, host: str = "127.0.0.1", *, backlog: int = 64) -> None:
        super().__init__(host)
        self.backlog = backlog
        self.connections = 0
        self._accepted = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind, listen and start the accepting thread."""
        if self._sock is not None:
            return
        sock = self._bind()
        sock.listen(self.backlog)
        sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, self._wake_r), name=repr(self), daemon=True
        )
        self._thread.start()

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        clients: list[socket.socket] = []
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    for key, _ in selector.select(timeout=1.0):
                        if key.fileobj is wake:
                            return
                        if key.fileobj is listener:
                            with contextlib.suppress(BlockingIOError, InterruptedError):
                                conn, _ = listener.accept()
                                conn.setblocking(False)
                                clients.append(conn)
                                selector.register(conn, selectors.EVENT_READ)
                                with self._accepted:
                                    self.connections += 1
                                    self._accepted.notify_all()
                            continue
                        peer = key.fileobj
                        assert isinstance(peer, socket.socket)
                        try:
                            data = peer.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            data = b""
                        if not data:  # the client gave up: drop our end too
                            selector.unregister(peer)
                            clients.remove(peer)
                            peer.close()
            finally:
                for conn in clients:
                    conn.close()

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` connections were accepted, at most ``timeout``
        seconds; True when they were."""
        with self._accepted:
            return self._accepted.wait_for(lambda: self.connections >= count, timeout)

    def close(self) -> None:
        """Stop the thread and close the listener and every accepted connection."""
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sock = self._wake_r = self._wake_w = None


class FullBacklogListener(_LoopbackFault):
    """A listening socket that never accepts, with its accept queue already full.

    New connections hang in the TCP handshake, so the client's *connect* timeout fires
    (``httpx.ConnectTimeout``): an overloaded or half-dead host.

    How it works on Linux (checked on 6.x kernels): ``listen(0)`` still admits one
    completed handshake (the kernel refuses only when the queue length is *greater* than
    the backlog). Once the accept queue is full, the kernel silently drops incoming SYNs
    (SYN cookies do not apply to a full accept queue), so the client retransmits its SYN
    after 1 s, 3 s, ... and a new ``connect()`` blocks until its timeout: httpx raises
    ``ConnectTimeout`` after exactly its connect timeout. The listener fills its queue
    itself on start: it opens non-blocking client connections one by one until one does
    not complete within ``settle`` seconds (at most ``max_fill`` of them), and keeps them
    all open until ``close()``. Other systems may refuse or queue instead; there,
    :meth:`start` raises ``RuntimeError`` when the queue never fills.

    Attributes:
        filled: how many client connections were used to fill the queue (including the
            one left hanging in the handshake).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        backlog: int = 0,
        settle: float = 0.1,
        max_fill: int = 64,
    ) -> None:
        if backlog not in (0, 1):
            raise ValueError(f"backlog must be 0 or 1, got {backlog!r}")
        if not 0 < settle <= 5:
            raise ValueError(f"settle must be in (0, 5] seconds, got {settle!r}")
        if not 1 <= max_fill <= 1024:
            raise ValueError(f"max_fill must be in 1..1024, got {max_fill!r}")
        super().__init__(host)
        self.backlog = backlog
        self.settle = settle
        self.max_fill = max_fill
        self._clients: list[socket.socket] = []

    @property
    def filled(self) -> int:
        """How many client connections fill the queue."""
        return len(self._clients)

    def start(self) -> None:
        """Bind, listen, and fill the accept queue; ``RuntimeError`` if it never fills."""
        if self._sock is not None:
            return
        sock = self._bind()
        sock.listen(self.backlog)
        self._sock = sock
        try:
            for _ in range(self.max_fill):
                if not self._connect_one():
                    return
            raise RuntimeError(
                f"the accept queue of {self.host}:{self._port} did not fill after "
                f"{self.max_fill} connections; this system does not drop SYNs on a full queue"
            )
        except BaseException:
            self.close()
            raise

    def _connect_one(self) -> bool:
        """Open one client; True when its handshake completed (the queue had room)."""
        client = socket.socket(_family(self.host), socket.SOCK_STREAM)
        self._clients.append(client)
        client.setblocking(False)
        client.connect_ex((self.host, self._port))
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_WRITE)
            done = bool(selector.select(timeout=self.settle))
        if done and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            raise RuntimeError(f"filling the accept queue of {self.host}:{self._port} failed")
        return done

    def close(self) -> None:
        """Close every client and the listener."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class RefusingAddress(_LoopbackFault):
    """A loopback port with nothing listening: connects are refused at once.

    The port stays bound (but not listening) while the block runs, so no other test can
    start a server on it by chance; the kernel answers a SYN to it with a RST, and httpx
    raises ``httpx.ConnectError`` ("Connection refused") without waiting.
    """

    def start(self) -> None:
        """Reserve the port."""
        if self._sock is None:
            self._sock = self._bind()

    def close(self) -> None:
        """Release the port."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ------------------------------------------------------------------ network namespaces


class NetnsError(RuntimeError):
    """Code run in a private network namespace failed; carries its ``stderr``."""

    def __init__(self, message: str, *, returncode: int | None, stderr: str) -> None:
        super().__init__(f"{message}\n{stderr}".rstrip())
        self.returncode = returncode
        self.stderr = stderr


def _find(tool: str) -> str | None:
    # nft lives in /usr/sbin, which is not on an unprivileged user's PATH.
    found = shutil.which(tool)
    if found is not None:
        return found
    for folder in ("/usr/sbin", "/sbin"):
        candidate = os.path.join(folder, tool)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# Brings ``lo`` up with SIOCGIFFLAGS / SIOCSIFFLAGS (linux/sockios.h), so nothing beyond
# Python is needed inside the namespace; then runs the code given as argv[1] as __main__.
_BOOTSTRAP = """\
import fcntl, socket, struct, sys
with socket.socket() as _s:
    _ifreq = fcntl.ioctl(_s.fileno(), 0x8913, struct.pack("16sh", b"lo", 0))
    _flags = struct.unpack("16sh", _ifreq[:18])[1]
    fcntl.ioctl(_s.fileno(), 0x8914, struct.pack("16sh", b"lo", _flags | 1))
_code = sys.argv[1]
del sys.argv[1]
sys.argv[0] = "-c"
exec(compile(_code, "<netns>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@functools.cache
def netns_available() -> tuple[bool, str]:
    """Whether :func:`run_in_netns` and :class:`NetnsBlackhole` can work here, and why not.

    Checks that ``unshare`` and ``nft`` exist and that an unprivileged user + network
    namespace can be created and given an nftables table (some containers and hardened
    kernels forbid it). The answer is computed once per process.

    Returns:
        ``(True, "")``, or ``(False, reason)`` with a reason fit for ``pytest.skip``.
    """
    if not sys.platform.startswith("linux"):
        return (False, f"network namespaces need Linux, not {sys.platform}")
    unshare = _find("unshare")
    if unshare is None:
        return (False, "unshare(1) not found (util-linux)")
    nft = _find("nft")
    if nft is None:
        return (False, "nft(8) not found (nftables)")
    try:
        probe = subprocess.run(  # noqa: S603 - fixed argv of tools found above
            [unshare, "-rn", nft, "add", "table", "inet", "superapp_probe"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (False, f"unshare -rn failed: {exc}")
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        return (False, f"cannot create a user+net namespace with nftables: {reason[0]}")
    return (True, "")


def run_in_netns(
    code: str,
    timeout: float,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` in a fresh user + network namespace with ``lo`` up.

    The namespace (``unshare -rn``) has only a loopback interface, private to it, and the
    code runs as namespace root, so it may call ``nft`` to change packet filtering without
    touching the host. It runs with this interpreter (``sys.executable``) and
    ``sys.path``, so it can import what this process imports.

    Args:
        code: Python source, run as ``__main__``.
        timeout: seconds (> 0) before the process is killed.
        args: extra ``sys.argv[1:]`` for the code.
        env: extra environment variables.

    Returns:
        The finished process, with text ``stdout`` and ``stderr`` (``check`` yourself).

    Raises:
        NetnsError: namespaces are not available here (see :func:`netns_available`).
        subprocess.TimeoutExpired: the code ran longer than ``timeout`` (it is killed).
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    available, reason = netns_available()
    if not available:
        raise NetnsError("network namespaces are not available", returncode=None, stderr=reason)
    unshare = _find("unshare")
    assert unshare is not None  # netns_available() found it
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full_env.update(env or {})
    return subprocess.run(  # noqa: S603 - argv built from sys.executable and found tools
        [unshare, "-rn", sys.executable, "-c", _BOOTSTRAP, code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


@dataclass(frozen=True, slots=True)
class BlackholeEnv:
    """What code running inside a :class:`NetnsBlackhole` gets to connect to.

    Both ports have a tiny HTTP server on 127.0.0.1 answering 200 ``{"ok": true}``;
    packets to ``blackhole_port`` are dropped by nftables, so connects to it time out.
    """

    blackhole_port: int
    open_port: int

    @property
    def blackhole_url(self) -> str:
        """``http://127.0.0.1:<blackhole_port>``."""
        return _url("127.0.0.1", self.blackhole_port)

    @property
    def open_url(self) -> str:
        """``http://127.0.0.1:<open_port>``."""
        return _url("127.0.0.1", self.open_port)


# Runs inside the namespace before the user's code: two HTTP servers on 127.0.0.1, then
# an nftables rule on the output hook that drops TCP to one of them. Loopback traffic
# crosses the output hook, and the kernel keeps retransmitting a SYN that netfilter
# dropped, so connect() waits out its timeout as it would against a dead data center.
_BLACKHOLE_PRELUDE = """\
import http.server, json, socketserver, subprocess, sys, threading

class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{{"ok": true}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = _answer
    def log_message(self, *args):
        pass

class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

_servers = [_Server(("127.0.0.1", 0), _Handler) for _ in range(2)]
for _server in _servers:
    threading.Thread(target=_server.serve_forever, daemon=True).start()
BLACKHOLE_PORT = _servers[0].server_address[1]
OPEN_PORT = _servers[1].server_address[1]
BLACKHOLE_URL = f"http://127.0.0.1:{{BLACKHOLE_PORT}}"
OPEN_URL = f"http://127.0.0.1:{{OPEN_PORT}}"
_ruleset = (
    "table inet superapp_blackhole {{\\n"
    "  chain out {{\\n"
    "    type filter hook output priority 0; policy accept;\\n"
    f"    tcp dport {{BLACKHOLE_PORT}} {action}\\n"
    "  }}\\n"
    "}}\\n"
)
subprocess.run([{nft!r}, "-f", "-"], input=_ruleset, text=True, check=True)
"""

# Calls a module-level function by name with a BlackholeEnv and JSON arguments, and prints
# its JSON result on the last line of stdout.
_CALL = """
import importlib, json
from superapp_sdk.testing._network import BlackholeEnv
_module = importlib.import_module({module!r})
_func = _module
for _part in {qualname!r}.split("."):
    _func = getattr(_func, _part)
_args, _kwargs = json.loads({args!r})
_result = _func(BlackholeEnv(BLACKHOLE_PORT, OPEN_PORT), *_args, **_kwargs)
print("\\n" + {marker!r} + json.dumps(_result))
"""

_RESULT_MARKER = "superapp-netns-result:"

_P = ParamSpec("_P")
_T = TypeVar("_T")


class NetnsBlackhole:
    """Run code where one loopback server is blackholed by nftables and another answers.

    In a private user + network namespace (see :func:`run_in_netns`) two HTTP servers
    start on 127.0.0.1; an nftables rule drops every TCP packet to the first, so a connect
    to it hangs until its timeout, exactly as against a data center that lost power. The
    second answers 200 ``{"ok": true}``. The host's network is untouched.

    Args:
        timeout: seconds (> 0) the whole run may take before it is killed.
        action: the nftables verdict for the blackholed port: ``"drop"`` (default; connects
            time out) or ``"reject with tcp reset"`` (connects are refused at once).

    Example::

        def probe(env: BlackholeEnv) -> str:
            try:
                httpx.get(env.blackhole_url, timeout=0.3)
            except httpx.ConnectTimeout:
                return "timeout"
            return "answered"

        assert NetnsBlackhole().call(probe) == "timeout"
    """

    __slots__ = ("action", "timeout")

    def __init__(self, *, timeout: float = 60.0, action: str = "drop") -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if action not in ("drop", "reject with tcp reset"):
            raise ValueError(f"action must be 'drop' or 'reject with tcp reset', got {action!r}")
        self.timeout = timeout
        self.action = action

    def _prelude(self) -> str:
        nft = _find("nft")
        if nft is None:
            raise NetnsError("nft(8) not found", returncode=None, stderr="")
        return _BLACKHOLE_PRELUDE.format(nft=nft, action=self.action)

    def run(self, code: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` in the namespace; it sees ``BLACKHOLE_PORT``, ``OPEN_PORT``,
        ``BLACKHOLE_URL`` and ``OPEN_URL`` as globals.

        Raises:
            NetnsError: namespaces are not available here.
            subprocess.TimeoutExpired: the run took longer than ``timeout``.
        """
        return run_in_netns(self._prelude() + code, self.timeout)

    def call(
        self,
        func: Callable[Concatenate[BlackholeEnv, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Call ``func(BlackholeEnv, *args, **kwargs)`` in the namespace; return its result.

        ``func`` must be importable by name (a module-level function); arguments and the
        result travel as JSON, so use JSON types (a tuple comes back as a list).

        Raises:
            NetnsError: namespaces are not available, or ``func`` raised (its traceback is
                in ``stderr``).
            subprocess.TimeoutExpired: the run took longer than ``timeout``.
        """
        module, qualname = func.__module__, func.__qualname__
        if module == "__main__" or "<locals>" in qualname:
            raise ValueError(f"func must be a module-level function, got {module}.{qualname}")
        importlib.import_module(module)  # fail here, not in the namespace, on a typo
        code = _CALL.format(
            module=module,
            qualname=qualname,
            args=json.dumps([list(args), kwargs]),
            marker=_RESULT_MARKER,
        )
        done = self.run(code)
        if done.returncode != 0:
            raise NetnsError(
                f"{module}.{qualname} failed in the namespace (exit {done.returncode})",
                returncode=done.returncode,
                stderr=done.stderr,
            )
        last = done.stdout.rstrip("\n").rsplit("\n", 1)[-1]
        if not last.startswith(_RESULT_MARKER):
            raise NetnsError(
                f"{module}.{qualname} printed no result", returncode=0, stderr=done.stderr
            )
        return cast(_T, json.loads(last.removeprefix(_RESULT_MARKER)))

    def __repr__(self) -> str:
        return f"NetnsBlackhole(timeout={self.timeout!r}, action={self.action!r})"
