"""
One Veil process for the live-stream benchmark (sse_bench.py starts it):
a full L{VeilService} (proxy, request log, hub, peer feed) on the database
given in C{VEIL_DATABASE_URL}, and the live stream (L{LiveStream}, as the
dashboard will mount it) on a port of its own, with a stand-in for the
dashboard's sign-in: the principal is the C{X-Bench-User} header, and every
site may be watched.  C{GET /rss} answers the process's resident memory
(KiB) and its open streams.  Prints one JSON line with its ports once ready.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from veil.reactor import install_if_free

install_if_free()

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import Site

from veil.config import load
from veil.live.sse import LiveStream
from veil.service import VeilService
from veil.store.logquery import RequestLogQueries


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Memory(Resource):
    isLeaf = True

    def __init__(self, live: LiveStream) -> None:
        super().__init__()
        self.live = live

    def render_GET(self, request) -> bytes:
        import gc

        gc.collect()
        return json.dumps({"rss_kib": rss_kib(), "streams": self.live.streams}).encode()


async def main() -> None:
    service = VeilService(load(None), reactor, lambda status: reactor.stop())
    service.privilegedStartService()
    service.startService()
    phase = await service.readiness.settled()
    if phase != "running":
        print(json.dumps({"error": service.readiness.detail}), flush=True)
        reactor.stop()
        return
    queries = RequestLogQueries(service.db)

    def authenticate(request) -> Deferred:
        user = request.getHeader(b"x-bench-user")
        return succeed(None if user is None else user.decode())

    live = LiveStream(service.hub, queries.latest, authenticate,
                      lambda principal, site: succeed(True), reactor,
                      metrics=service.metrics, max_streams=5000)
    root = Resource()
    root.putChild(b"stream", live)
    root.putChild(b"rss", Memory(live))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    reactor.addSystemEventTrigger("before", "shutdown", live.close_all)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    print(json.dumps({"stream": port.getHost().port,
                      "http": service.edge.ports["http"].getHost().port,
                      "origin": service.hub.origin}), flush=True)


if __name__ == "__main__":
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()))
    reactor.run()
    sys.exit(0)
