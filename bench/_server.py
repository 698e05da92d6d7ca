"""A loopback echo server and its fault proxy in a child process.

Benchmarks run their servers out of process: in the benchmark's own process the server's
and the proxy's event-loop threads compete with the client for the GIL, which adds
milliseconds at the median and tens of milliseconds at p99 (measured: p50 3-5 ms, p99
~48 ms through an in-process proxy, against 0.5 ms and 1 ms direct), and that would be
charged to whatever is being measured.

Protocol on the child's stdin/stdout: the child prints ``<server port> <proxy port>``, then
reads commands (``pass``, ``hang``, ``refuse``, ``reset``, ``quit``) and answers ``ok``.
"""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType
from typing import Self

from superapp_sdk.testing import Burn


class ChildServer:
    """``with ChildServer() as s:`` -> ``s.url`` (direct), ``s.proxy_url``, ``s.set(Burn.HANG)``."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.proxy_port = 0

    @property
    def url(self) -> str:
        """The server, direct."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_url(self) -> str:
        """The server, through the fault proxy."""
        return f"http://127.0.0.1:{self.proxy_port}"

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench._server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2:
            self._proc.kill()
            raise RuntimeError("bench server child did not start")
        self.port, self.proxy_port = int(line[0]), int(line[1])
        return self

    def set(self, mode: Burn) -> None:
        """Switch the proxy's mode."""
        assert self._proc is not None
        assert self._proc.stdin
        assert self._proc.stdout
        self._proc.stdin.write(mode.value + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"bench server child refused {mode}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is None:
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write("quit\n")
            self._proc.stdin.flush()
            self._proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait(5)


def _child() -> None:
    from superapp_sdk.testing import FaultProxy, UvicornServer, echo_app

    with UvicornServer(echo_app) as server, FaultProxy(server.port) as proxy:
        print(server.port, proxy.port, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            proxy.set(Burn(command))
            print("ok", flush=True)


if __name__ == "__main__":
    _child()
