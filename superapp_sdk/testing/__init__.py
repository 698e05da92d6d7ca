"""Test doubles and fault injection for applications built on superapp-sdk.

``FakeClock`` drives every timer of the SDK by hand; ``FaultTransport`` injects faults at
the httpx transport seam, ``Lost`` among them (the server executes, the answer is lost);
``HangingServer``, ``FullBacklogListener``, ``RefusingAddress``, ``FaultProxy`` and
``NetnsBlackhole`` fail real loopback sockets; ``UvicornServer`` runs simulators;
``superapp_sdk.testing.kakao`` is a simulated Kakao data center that can be set on fire, and
``superapp_sdk.testing.echo`` in-process alternates; both list the effects they executed.
"""

from superapp_sdk.testing._clock import FakeClock
from superapp_sdk.testing._faults import (
    AsyncFaultTransport,
    Error,
    Fault,
    FaultTransport,
    Hang,
    Latency,
    Lost,
    LostHow,
    Malformed,
    Reset,
    Schedule,
    ScheduleLike,
    Status,
    after,
    always,
    every,
    for_hosts,
    for_paths,
    sequence,
    when,
)
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
from superapp_sdk.testing._proxy import Burn, FaultProxy
from superapp_sdk.testing._servers import UvicornServer, echo_app

__all__ = [
    "AsyncFaultTransport",
    "BlackholeEnv",
    "Burn",
    "Error",
    "FakeClock",
    "Fault",
    "FaultProxy",
    "FaultTransport",
    "FullBacklogListener",
    "Hang",
    "HangingServer",
    "Latency",
    "Lost",
    "LostHow",
    "Malformed",
    "NetnsBlackhole",
    "NetnsError",
    "RefusingAddress",
    "Reset",
    "Schedule",
    "ScheduleLike",
    "Status",
    "UvicornServer",
    "after",
    "always",
    "echo_app",
    "every",
    "for_hosts",
    "for_paths",
    "netns_available",
    "run_in_netns",
    "sequence",
    "when",
]
