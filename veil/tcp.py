"""Small TCP settings shared by the edge and the origin pool."""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off for C{transport} (TCP, or TLS over TCP), so
    that small writes (handshake flights, response heads) leave at once
    instead of waiting for the peer's delayed ACK.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass  # not TCP (a test transport), or already closed
