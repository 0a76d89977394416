"""
Logging helpers: the JSON observer for journald, and redaction.

Run C{twistd --logger veil.logs.json_observer ...} to get one JSON object
per line on standard output.  Never log secrets or personal data: log the
output of L{fingerprint} instead of a secret, and L{redact_ip} instead of a
client address in debug output.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A log observer writing JSON lines to standard output."""
    return jsonFileLogObserver(sys.stdout)


def fingerprint(secret: str | bytes) -> str:
    """A short, stable, non-reversible tag for a secret (a session id, a token)."""
    data = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:12]


def redact_ip(address: str) -> str:
    """The client's network, not the client: /24 for IPv4, /48 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "invalid"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
