"""
The dashboard's Klein application.

For now it carries the operational endpoints: C{/health} (liveness, with
the version and every worker's status), C{/ready} (200 only when start-up
is complete and the database answers) and C{/metrics} (Prometheus text).

C{/ready} answers from what the process already knows when it can: while
the database is known to be unreachable (the last call or the pool's own
reconnection attempts failed), it answers 503 at once and checks again in
the background (one check at a time), so the next probe sees the recovery;
otherwise it pings through the pool, which takes at most
C{min(2 s, database.connect_timeout)} when the database has just gone away.

These endpoints are probed over and over (load balancers, Prometheus): like
every request on the dashboard port, they write no access line to the log
(L{veil.dashboard.dashboard.dashboard_site}).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from veil import __version__
from veil.errors import StoreUnavailable
from veil.metrics import Registry

_log = Logger()


class Readiness:
    """
    What C{/ready} consults: the start-up phase, what is known about the
    database, and a database ping.

    @ivar phase: C{"starting"}, C{"running"}, C{"failed"} or C{"stopping"}.
    @ivar ping: a new ping through the pool: a Deferred of its round trip
        in seconds, failing with L{StoreUnavailable}.
    @ivar unreachable: why the database is known to be unreachable right
        now, or L{None} when it is not known to be (the pool's state, no
        I/O).
    """

    def __init__(self, ping: Callable[[], Deferred[float]] | None = None,
                 unreachable: Callable[[], str | None] | None = None) -> None:
        self.phase = "starting"
        self.detail = "waiting for the database"
        self.ping = ping
        self.unreachable = unreachable
        self._waiting: list[Deferred[str]] = []
        #: The background check while one runs (see L{check_later}).
        self.checking: Deferred[None] | None = None

    def known_unreachable(self) -> str | None:
        """Why the database is known to be unreachable, or L{None}."""
        return None if self.unreachable is None else self.unreachable()

    def check_later(self) -> None:
        """
        Ping the database in the background, unless a ping already runs;
        the ping's outcome updates what L{unreachable} reports.
        """
        if self.checking is not None or self.ping is None:
            return

        def done(result: object) -> None:
            self.checking = None
            if isinstance(result, Failure) and not result.check(StoreUnavailable):
                _log.failure("Checking the database for /ready failed", result)

        checking = self.ping()
        self.checking = checking
        checking.addBoth(done)

    def set_phase(self, phase: str, detail: str = "") -> None:
        """Enter C{phase}; leaving C{"starting"} wakes every L{settled} waiter."""
        self.phase, self.detail = phase, detail
        if phase != "starting":
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(phase)

    def settled(self) -> Deferred[str]:
        """
        A new L{Deferred} that fires with the phase once start-up has
        ended, C{"running"} or C{"failed"}.
        """
        if self.phase != "starting":
            return succeed(self.phase)
        d: Deferred[str] = Deferred()
        self._waiting.append(d)
        return d


class DashboardApp:
    """The Klein application served on the dashboard port."""

    app = Klein()

    def __init__(self, readiness: Readiness, workers: Callable[[], dict[str, Any]],
                 metrics: Registry) -> None:
        self._readiness = readiness
        self._workers = workers
        self._metrics = metrics

    def resource(self) -> IResource:
        return self.app.resource()

    @staticmethod
    def _json(request: IRequest, status: int, body: dict[str, Any]) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return self._json(request, 200, {
            "status": "ok",
            "version": __version__,
            "phase": self._readiness.phase,
            "workers": self._workers(),
        })

    @app.route("/ready", methods=["GET"])
    async def ready(self, request: IRequest) -> bytes:
        readiness = self._readiness
        if readiness.phase != "running" or readiness.ping is None:
            return self._json(request, 503, {
                "ready": False, "phase": readiness.phase, "reason": readiness.detail,
                "database": {"ok": False},
            })
        known = readiness.known_unreachable()
        if known is not None:
            readiness.check_later()
            return self._json(request, 503, {
                "ready": False, "phase": readiness.phase,
                "reason": "the database does not answer",
                "database": {"ok": False, "error": known},
            })
        try:
            seconds = await readiness.ping()
        except StoreUnavailable as e:
            return self._json(request, 503, {
                "ready": False, "phase": readiness.phase,
                "reason": "the database does not answer",
                "database": {"ok": False, "error": str(e)},
            })
        return self._json(request, 200, {
            "ready": True, "phase": readiness.phase,
            "database": {"ok": True, "latency_ms": round(seconds * 1000, 2)},
        })

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        return self._metrics.render().encode("utf-8")
