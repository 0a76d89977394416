"""
Logging helpers: the JSON observer for journald, redaction, rate limits,
and the bridge from the standard library's C{logging}.

Run C{twistd --logger veil.logs.json_observer ...} to get one JSON object
per line on standard output.  Never log secrets or personal data: log the
output of L{fingerprint} instead of a secret, and L{redact_ip} instead of a
client address in debug output.

Libraries Veil uses (psycopg's connection pool above all) log through the
standard library's C{logging}.  Left alone, its warnings reach standard
error, which twistd turns into C{[stderr#error]} lines, one per retry
during a database outage; L{route_stdlib_logging} sends them to Twisted's
log instead, each kind at most once a minute.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import re
import sys
from typing import Any

from twisted.logger import ILogObserver, Logger, LogLevel, jsonFileLogObserver
from zope.interface import implementer


def json_observer() -> ILogObserver:
    """A log observer writing JSON lines to standard output, redacted (L{redact})."""
    return RedactingObserver(jsonFileLogObserver(sys.stdout))


#: What never belongs in a log: e-mail addresses, API and GitHub tokens,
#: bearer credentials.  A backstop: code logs pseudonyms and ids instead.
_SECRETS = (
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"veil_pat_[A-Za-z0-9_-]+"), "veil_pat_[redacted]"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9_]{20,}"), "gh_[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
)
_SECRET_KEYS = re.compile(r"(?i)^(password|passwd|secret|token|cookie|authorization|"
                          r"csrf_token|client_secret|api_token)$")


def redact_text(text: str) -> str:
    """C{text} with e-mail addresses and tokens masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def redact(event: dict[str, Any]) -> dict[str, Any]:
    """
    The event with secret-looking fields masked (a copy when anything
    changed): fields named like a secret, and e-mail addresses and tokens
    inside any text field.
    """
    changed: dict[str, Any] = {}
    for key, value in event.items():
        if not isinstance(value, str) or key in ("log_format", "log_namespace", "log_level"):
            continue
        if _SECRET_KEYS.match(key):
            changed[key] = "[redacted]"
            continue
        cleaned = redact_text(value)
        if cleaned != value:
            changed[key] = cleaned
    return {**event, **changed} if changed else event


@implementer(ILogObserver)
class RedactingObserver:
    """Passes every event to C{observer} through L{redact}."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        self._observer(redact(event))


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


class Throttle:
    """
    At most one log event per key every C{interval} seconds; the ones held
    back are counted and their number rides on the next event that goes
    out, as its C{suppressed} field (and in its text, through the
    C{{suppressed_text}} placeholder the caller may put in its format).

    For whatever the outside world can repeat as often as it likes
    (garbage TLS connections, a database outage retried several times a
    second, a full origin pool): the first event says what happens, and
    the log stays readable during an incident.

        garbage = Throttle(reactor, 60.0)
        garbage.emit(_log.warn, "tls-garbage",
                     "Dropped a connection that does not speak TLS{suppressed_text}",
                     peer=redact_ip(ip))
    """

    def __init__(self, clock: object, interval: float, max_keys: int = 1024) -> None:
        self._clock = clock
        self._interval = interval
        self._max_keys = max_keys
        #: key -> [time of the last event that went out, events held back since]
        self._seen: dict[object, list] = {}

    def emit(self, method, key: object, format: str, **fields: object) -> bool:
        """
        Log C{format} with C{fields} through C{method} (a bound L{Logger}
        method such as C{log.warn}) unless an event for C{key} went out less
        than C{interval} seconds ago; returns whether it went out.
        """
        now = self._clock.seconds()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        suppressed = 0 if entry is None else entry[1]
        if entry is None and len(self._seen) >= self._max_keys:
            # Forget the stalest keys rather than grow without bound.
            for stale in sorted(self._seen, key=lambda k: self._seen[k][0])[:self._max_keys // 4]:
                del self._seen[stale]
        self._seen[key] = [now, 0]
        text = f" ({suppressed} similar in the last {self._interval:g} s not logged)" \
            if suppressed else ""
        method(format, suppressed=suppressed, suppressed_text=text, **fields)
        return True


_LEVELS = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
           (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))


def _twisted_level(levelno: int) -> LogLevel:
    for threshold, level in _LEVELS:
        if levelno >= threshold:
            return level
    return LogLevel.debug


class StdlibBridge(logging.Handler):
    """
    A C{logging} handler that re-emits records as Twisted log events in
    the record's logger's namespace (C{psycopg.pool}, ...), on the reactor
    thread (records come from any thread), at most one per logger and
    message template every C{interval} seconds (L{Throttle}), each on one
    line.
    """

    def __init__(self, reactor: Any, interval: float = 60.0) -> None:
        super().__init__(logging.WARNING)
        self._reactor = reactor
        self._throttle = Throttle(reactor, interval)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(part.strip() for part in record.getMessage().splitlines())
        except Exception:  # noqa: BLE001 - a library's bad format arguments
            text = str(record.msg)
        self._reactor.callFromThread(self._log, record.name, str(record.msg),
                                     _twisted_level(record.levelno), text)

    def _log(self, name: str, template: str, level: LogLevel, text: str) -> None:
        log = Logger(namespace=name)
        self._throttle.emit(functools.partial(log.emit, level), (name, template),
                            "{text}{suppressed_text}", text=text)


def route_stdlib_logging(reactor: Any, interval: float = 60.0) -> StdlibBridge:
    """
    Send the standard library's log records (warnings and above) to
    Twisted's log through a L{StdlibBridge}, instead of to standard error.

    @return: the handler installed on the root logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    bridge = StdlibBridge(reactor, interval)
    root.addHandler(bridge)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    return bridge
