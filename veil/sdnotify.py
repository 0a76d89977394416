"""
systemd's readiness protocol (C{Type=notify}), without libsystemd.

One datagram to the socket named by C{NOTIFY_SOCKET}; outside systemd the
variable is absent and nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (such as C{"READY=1"}) to systemd.

    @return: whether a notification socket was configured and written to.
    """
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(path)
            sock.send(state.encode("utf-8"))
    except OSError:
        return False
    return True
