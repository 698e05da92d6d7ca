"""Sans-IO decisions: pure state machines with time and randomness injected.

Nothing in this package performs I/O, sleeps, starts threads or imports httpx, asyncio,
threading or diskcache; ``tests/test_core_sans_io.py`` enforces it. The shells in
``superapp_sdk.resilience`` drive these machines and do the waiting and the calling.
"""
