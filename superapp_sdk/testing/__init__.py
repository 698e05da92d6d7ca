"""Test doubles and fault injection for applications built on superapp-sdk.

``FakeClock`` drives every timer of the SDK by hand; the rest of this package injects
faults into httpx transports and real loopback sockets, and simulates providers.
"""

from superapp_sdk.testing._clock import FakeClock

__all__ = ["FakeClock"]
