"""
The live stream under load: many subscribers on one Veil process, and how
long a request takes from the proxy's response to the subscribers' receipt
of its event, through the whole path (proxy, request log, hub, and with
C{--processes 2} the request log's announcement and the other process's
peer feed):

    .venv/bin/python bench/dashboard/sse_bench.py [--subscribers 500] [--sites 100]
        [--rate 200] [--seconds 30] [--processes 1|2] [--slow N]

It starts an origin, C{--processes} Veil processes (sse_server.py: a full
VeilService each, on the bench PostgreSQL of benchdb.py, and the live stream
mounted as the dashboard will mount it, with a stand-in sign-in), adds
C{--sites} sites, opens C{--subscribers} streams on the last process (spread
over the sites, one user each) and waits for their hydration, then sends
C{--rate} requests a second for C{--seconds} seconds through the first
process's plain-HTTP port, each on a new connection, spread over the sites.
Every subscriber of a site should receive every request of that site.
With C{--slow N}, N subscribers stop reading once hydrated (not counted in
the latency): the server must hold their memory to a bound, and drop them
after its stall time-out (60 s).

Reported: the streaming process's resident memory before the subscribers,
with them, after the load and after they left (and per subscriber); the
delivery latency (each subscriber's receipt of an event minus the time the
proxy's response ended at the client, both taken here) as p50/p95/p99/max,
and events missing.  Everything runs on this machine: the load generator and
the subscribers share a process, PostgreSQL and the Veil processes share
the CPUs with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import treq
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class Origin(protocol.Protocol):
    """Answers every request with a small 200, keeping the connection."""

    buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Content-Type: text/plain\r\n\r\nok")


class Subscriber(protocol.Protocol):
    """One stream, read as an HTTP/1.0 response (no chunking): the events' receipt times."""

    def __init__(self, bench: Bench, user: str, site: uuid.UUID) -> None:
        self.bench, self.user, self.site = bench, user, site
        self.buffer = b""
        self.headers_done = False
        self.hydrated: Deferred[None] = Deferred()
        self.received: dict[str, float] = {}
        self.gaps = 0
        self.lost = False

    def connectionLost(self, reason: Any) -> None:
        self.lost = True

    def connectionMade(self) -> None:
        self.transport.write(
            f"GET /stream?site_id={self.site} HTTP/1.0\r\nHost: bench\r\n"
            f"X-Bench-User: {self.user}\r\nAccept: text/event-stream\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.headers_done:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream refused: {head[:100]!r}")
            self.headers_done = True
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            kind, data_line = b"", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    kind = line[7:]
                elif line.startswith(b"data: "):
                    data_line = line[6:]
            if kind == b"request":
                # The request id without parsing all of the JSON (cheaper).
                start = data_line.index(b'"request_id":"') + 14
                self.received[data_line[start:data_line.index(b'"', start)].decode()] = now
            elif kind == b"hydrate" and not self.hydrated.called:
                self.hydrated.callback(None)
            elif kind == b"gap":
                self.gaps += 1


class Request(protocol.Protocol):
    """One proxied request on its own connection; notes when its response ended."""

    def __init__(self, bench: Bench, host: str, n: int) -> None:
        self.bench, self.host, self.n = bench, host, n
        self.buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(f"GET /bench/{self.n} HTTP/1.1\r\nHost: {self.host}\r\n"
                             f"Connection: close\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data

    def connectionLost(self, reason: Any) -> None:
        done = time.monotonic()
        head = self.buffer.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"x-request-id":
                self.bench.responses[value.strip().decode()] = (done, self.host)
        if not head.startswith(b"HTTP/1.1 200"):
            self.bench.failed += 1


class Server(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred[dict] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.ready.called:
            self.ready.callback(json.loads(self.out.split(b"\n", 1)[0]))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class Bench:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.responses: dict[str, tuple[float, str]] = {}
        self.failed = 0

    async def rss(self, port: int) -> dict:
        response = await treq.get(f"http://127.0.0.1:{port}/rss", persistent=False)
        return await response.json()

    async def run(self) -> None:
        reactor, args = self.reactor, self.args
        benchdb.drop("veil_sse")
        conninfo = benchdb.url("veil_sse")
        origin = reactor.listenTCP(0, protocol.Factory.forProtocol(Origin),
                                   interface="127.0.0.1")
        upstream = f"http://127.0.0.1:{origin.getHost().port}"
        sites: list[tuple[uuid.UUID, str]] = []
        with psycopg.connect(conninfo, autocommit=True) as conn:
            owner = conn.execute("INSERT INTO users (email) VALUES ('bench@example.com')"
                                 " RETURNING id").fetchone()[0]
            for i in range(args.sites):
                domain = f"site{i}.bench.test"
                site = conn.execute(
                    "INSERT INTO sites (owner_id, domain, upstream, status, allow_plain_http)"
                    " VALUES (%s, %s, %s, 'active', true) RETURNING id",
                    (owner, domain, upstream)).fetchone()[0]
                sites.append((site, domain))
        servers = []
        for i in range(args.processes):
            data = benchdb.BASE / f"sse-{i}"
            env = dict(os.environ, VEIL_DATABASE_URL=conninfo, VEIL_DATA_DIR=str(data),
                       VEIL_DASHBOARD_PORT="0", VEIL_EDGE_PORT="0", VEIL_HTTP_PORT="0",
                       PYTHONPATH=str(REPO))
            server = Server()
            reactor.spawnProcess(server, sys.executable,
                                 [sys.executable, str(HERE / "sse_server.py")], env=env,
                                 path=str(REPO))
            servers.append((server, await server.ready))
        try:
            await self.measure(servers, sites)
        finally:
            for server, _ in servers:
                server_process = server.transport
                if server_process.pid is not None:
                    server_process.signalProcess("TERM")
                await server.ended
            await origin.stopListening()

    async def measure(self, servers: list, sites: list[tuple[uuid.UUID, str]]) -> None:
        reactor, args = self.reactor, self.args
        proxy_port = servers[0][1]["http"]
        stream_port = servers[-1][1]["stream"]
        before = await self.rss(stream_port)
        subscribers = []
        connecting = []
        for i in range(args.subscribers):
            site, _ = sites[i % len(sites)]
            subscriber = Subscriber(self, f"user{i}", site)
            subscribers.append(subscriber)
            endpoint = protocol.ClientCreator(reactor, lambda s=subscriber: s)
            connecting.append(endpoint.connectTCP("127.0.0.1", stream_port))
            if len(connecting) % 50 == 0:
                await defer.gatherResults(connecting[-50:])
        await defer.gatherResults(connecting)
        await defer.gatherResults([s.hydrated for s in subscribers])
        # The slow ones stop reading: their connections back up.
        slow = subscribers[:args.slow]
        for s in slow:
            s.transport.pauseProducing()
        connected = await self.rss(stream_port)
        print(f"{args.subscribers} subscribers hydrated", file=sys.stderr)

        sent = 0
        started = time.monotonic()

        def tick() -> None:
            nonlocal sent
            due = int((time.monotonic() - started) * args.rate)
            while sent < due:
                _, domain = sites[sent % len(sites)]
                protocol.ClientCreator(reactor, Request, self, domain, sent).connectTCP(
                    "127.0.0.1", proxy_port)
                sent += 1

        loop = task.LoopingCall(tick)
        loop.clock = reactor
        loop.start(0.005)
        await task.deferLater(reactor, args.seconds, lambda: None)
        loop.stop()
        await task.deferLater(reactor, 3.0, lambda: None)   # the last deliveries
        loaded = await self.rss(stream_port)
        for s in subscribers:
            s.transport.loseConnection()
        await task.deferLater(reactor, 1.0, lambda: None)
        after = await self.rss(stream_port)

        by_site: dict[str, list[Subscriber]] = {}
        for s, (site, domain) in zip(subscribers, [sites[i % len(sites)]
                                                   for i in range(len(subscribers))]):
            by_site.setdefault(domain, []).append(s)
        latencies, missing = [], 0
        fast = set(subscribers[args.slow:])
        for request_id, (done, host) in self.responses.items():
            for s in by_site.get(host, ()):
                if s not in fast:
                    continue
                seen = s.received.get(request_id)
                if seen is None:
                    missing += 1
                else:
                    latencies.append((seen - done) * 1000)
        latencies.sort()

        def q(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

        gaps = sum(s.gaps for s in subscribers)
        dropped = sum(1 for s in slow if s.lost)
        path = "requests proxied by another process" if args.processes > 1 else "same process"
        print(f"\n## Live stream: {args.subscribers} subscribers over {args.sites} sites,"
              f" {args.rate} requests/s for {args.seconds} s, {args.processes} process(es)"
              f" ({path})\n")
        print("| | value |\n|---|---|")
        print(f"| requests sent / answered 200 | {sent} / {len(self.responses) - self.failed} |")
        print(f"| events expected / received / missing | {len(latencies) + missing} /"
              f" {len(latencies)} / {missing} |")
        print(f"| gap events | {gaps} |")
        if slow:
            print(f"| subscribers that stopped reading / disconnected by the server |"
                  f" {len(slow)} / {dropped} |")
        if latencies:
            print(f"| delivery latency p50 / p95 / p99 / max (ms) |"
                  f" {statistics.median(latencies):.1f} / {q(0.95):.1f} / {q(0.99):.1f}"
                  f" / {latencies[-1]:.1f} |")
        per = (connected["rss_kib"] - before["rss_kib"]) / max(1, args.subscribers)
        print(f"| streaming process RSS: before / with subscribers / after load / after they"
              f" left (MiB) | {before['rss_kib'] / 1024:.1f} / {connected['rss_kib'] / 1024:.1f}"
              f" / {loaded['rss_kib'] / 1024:.1f} / {after['rss_kib'] / 1024:.1f} |")
        print(f"| RSS per subscriber (KiB) | {per:.1f} |")
        print(f"| open streams at the end | {after['streams']} |")
        load = os.getloadavg()
        print(f"\nMachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f}"
              f" {load[2]:.2f} at the end (shared with other work).")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--slow", type=int, default=0,
                        help="subscribers (of the first sites) that stop reading once hydrated")
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(Bench(reactor, args).run()))


if __name__ == "__main__":
    main()
