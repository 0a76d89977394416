"""
A DNS server on loopback for tests, on C{twisted.names}' protocols.

It plays the recursive resolver Veil is configured with: it knows a small
world of zones whose records the test edits while it runs, and answers as
a resolver would, following CNAME chains across its zones, with NXDOMAIN
for names that do not exist (also outside every zone, as the root would)
and NODATA (with the zone's SOA) for names that exist without records of
the type asked.  It listens on UDP and TCP on the same free port; a UDP
answer over 512 bytes goes out truncated, so the client asks again over TCP.

    server = dns_server_for(self)
    server.world.add_zone("example.test")
    server.world.add("shop.example.test", cname("edge.veil.test"))
    resolvers = server.address          # "127.0.0.1:PORT" for dns.resolvers

C{world.mode} makes the whole server misbehave: C{"silent"} never answers,
C{"servfail"} and C{"refused"} answer every question with that error,
C{"mismatch"} answers another question than the one asked;
C{world.servfail} holds names (C{"name"}, or C{"name TYPE"} for one type)
answered with SERVFAIL.  C{world.chase =
False} answers only the first CNAME of a chain, as an authoritative server
does for targets outside its zone.  C{world.queries} records what was asked.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
)
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.support.pebble import free_port
from tests.support.waiting import until

CAA_TYPE = 257
TYPE_NAMES = {**dns.QUERY_TYPES, CAA_TYPE: "CAA"}
_SOA = dns.Record_SOA(mname=b"ns1.test", rname=b"hostmaster.test", serial=1, refresh=3600,
                      retry=600, expire=86400, minimum=60, ttl=60)


@attrs.frozen
class Rec:
    """A record to serve: its type and C{twisted.names} payload."""

    type: int
    payload: Any


def a(address: str) -> Rec:
    return Rec(dns.A, dns.Record_A(address, ttl=60))


def aaaa(address: str) -> Rec:
    return Rec(dns.AAAA, dns.Record_AAAA(address, ttl=60))


def cname(target: str) -> Rec:
    return Rec(dns.CNAME, dns.Record_CNAME(target.encode("ascii"), ttl=60))


def txt(*strings: str | bytes) -> Rec:
    data = [s if isinstance(s, bytes) else s.encode("utf-8") for s in strings]
    return Rec(dns.TXT, dns.Record_TXT(*data, ttl=60))


def mx(exchange: str, preference: int = 10) -> Rec:
    return Rec(dns.MX, dns.Record_MX(preference, exchange.encode("ascii"), ttl=60))


def caa(flags: int, tag: str, value: str) -> Rec:
    """A CAA record, written out in its wire format here (RFC 8659 §4.1)."""
    raw = bytes([flags, len(tag)]) + tag.encode("ascii") + value.encode("utf-8")
    return Rec(CAA_TYPE, dns.UnknownRecord(raw, ttl=60))


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@attrs.define
class World:
    """The zones and records the server answers from; tests edit it live."""

    zones: set[str] = attrs.field(factory=set)
    records: dict[str, list[Rec]] = attrs.field(factory=dict)
    servfail: set[str] = attrs.field(factory=set)
    mode: str = "answer"
    chase: bool = True
    queries: list[tuple[str, str, str]] = attrs.field(factory=list)

    def add_zone(self, apex: str) -> None:
        """Make C{apex} a zone apex (it gets an SOA and an NS record)."""
        self.zones.add(_norm(apex))

    def add(self, name: str, *records: Rec) -> None:
        self.records.setdefault(_norm(name), []).extend(records)

    def set(self, name: str, *records: Rec) -> None:
        """Replace every record at C{name} by C{records}."""
        self.records[_norm(name)] = list(records)

    def remove(self, name: str) -> None:
        self.records.pop(_norm(name), None)

    def asked(self, rtype: str | None = None) -> list[str]:
        """The names asked (of one type), in order."""
        return [name for name, kind, _ in self.queries if rtype is None or kind == rtype]

    # -- answering ---------------------------------------------------------

    def _zone(self, name: str) -> str | None:
        candidates = [z for z in self.zones if name == z or name.endswith("." + z)]
        return max(candidates, key=len) if candidates else None

    def _at(self, name: str) -> list[Rec]:
        here = list(self.records.get(name, []))
        if name in self.zones:
            here += [Rec(dns.SOA, _SOA), Rec(dns.NS, dns.Record_NS(b"ns1.test", ttl=60))]
        return here

    def _exists(self, name: str) -> bool:
        return bool(self._at(name)) or any(n.endswith("." + name) for n in self.records)

    def answer(self, qname: str, qtype: int) -> tuple[int, list[dns.RRHeader],
                                                     list[dns.RRHeader]]:
        """The rcode, answer and authority sections for a question."""
        answers: list[dns.RRHeader] = []
        current = _norm(qname)
        seen: set[str] = set()
        while len(seen) < 16 and current not in seen:
            seen.add(current)
            if current in self.servfail or f"{current} {TYPE_NAMES.get(qtype)}" in self.servfail:
                return dns.ESERVER, [], []
            zone = self._zone(current)
            if zone is None:
                return dns.ENAME, answers, []
            soa = [dns.RRHeader(zone, dns.SOA, dns.IN, 60, _SOA, auth=True)]
            here = self._at(current)
            found = [r for r in here if r.type == qtype]
            if found:
                return dns.OK, answers + [self._rr(current, r) for r in found], []
            alias = next((r for r in here if r.type == dns.CNAME), None)
            if alias is None:
                return (dns.OK if self._exists(current) else dns.ENAME), answers, soa
            answers.append(self._rr(current, alias))
            if not self.chase:
                return dns.OK, answers, []
            current = _norm(alias.payload.name.name.decode("ascii"))
        # A loop, or a chain too long: what was found so far, as resolvers do.
        return dns.OK, answers, []

    @staticmethod
    def _rr(name: str, record: Rec) -> dns.RRHeader:
        return dns.RRHeader(name, record.type, dns.IN, 60, record.payload, auth=True)


class _Factory(DNSServerFactory):
    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self._lost: dict[Any, Deferred[None]] = {}

    def connectionMade(self, protocol: Any) -> None:
        super().connectionMade(protocol)
        self._lost[protocol] = Deferred()

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        self._lost.pop(protocol).callback(None)

    def close_connections(self) -> Deferred[Any]:
        waits = list(self._lost.values())
        for protocol in list(self.connections):
            protocol.transport.loseConnection()
        return DeferredList(waits)

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        world = self.world
        query = message.queries[0]
        name = query.name.name.decode("ascii", "replace")
        world.queries.append((_norm(name), TYPE_NAMES.get(query.type, str(query.type)),
                              "udp" if address is not None else "tcp"))
        if world.mode == "silent":
            return
        rcode, answers, authority = {
            "servfail": (dns.ESERVER, [], []),
            "refused": (dns.EREFUSED, [], []),
        }.get(world.mode) or world.answer(name, query.type)
        response = self._reply(message, rcode, answers, authority)
        if world.mode == "mismatch":
            response.queries = [dns.Query(b"elsewhere.test", dns.A, dns.IN)]
        if address is not None and len(response.toStr()) > 512:
            response = self._reply(message, rcode, [], [])
            response.trunc = 1
        if address is None:
            protocol.writeMessage(response)
        else:
            protocol.writeMessage(response, address)

    @staticmethod
    def _reply(message: dns.Message, rcode: int, answers: list[dns.RRHeader],
               authority: list[dns.RRHeader]) -> dns.Message:
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode,
                               recDes=message.recDes, recAv=1, rCode=rcode, maxSize=0)
        response.queries = message.queries
        response.answers = answers
        response.authority = authority
        return response


@attrs.define(eq=False)
class DnsServer:
    """A running server: its world, port and C{dns.resolvers} value."""

    world: World
    port: int
    _udp: Any
    _tcp: Any
    _factory: _Factory

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def stop(self) -> None:
        await self._factory.close_connections()
        await self._tcp.stopListening()
        await self._udp.stopListening()


def dns_server_for(testcase: SynchronousTestCase, world: World | None = None) -> DnsServer:
    """Start a server on a free loopback port, stopped when C{testcase} cleans up."""
    world = world if world is not None else World()
    factory = _Factory(world)
    factory.noisy = False
    for _ in range(20):
        port = free_port(udp_too=True)
        protocol = dns.DNSDatagramProtocol(factory)
        protocol.noisy = False
        try:
            udp = _reactor.listenUDP(port, protocol, interface="127.0.0.1")
        except OSError:
            continue
        try:
            tcp = _reactor.listenTCP(port, factory, interface="127.0.0.1")
        except OSError:
            udp.stopListening()
            continue
        break
    else:
        raise RuntimeError("no port free for UDP and TCP on 127.0.0.1")
    server = DnsServer(world, port, udp, tcp, factory)
    testcase.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
    return server


def silent_port(testcase: SynchronousTestCase) -> tuple[str, int]:
    """A loopback UDP port that takes questions and never answers: a resolver that is down."""
    from twisted.internet.protocol import DatagramProtocol

    for _ in range(20):
        port = free_port(udp_too=True)
        try:
            listening = _reactor.listenUDP(port, DatagramProtocol(), interface="127.0.0.1")
        except OSError:
            continue
        testcase.addCleanup(listening.stopListening)
        return ("127.0.0.1", port)
    raise RuntimeError("no UDP port free on 127.0.0.1")


@implementer(IReactorTime, IReactorUDP, IReactorTCP, IReactorFDSet)
class NetworkWithClock:
    """
    The real reactor's network with a L{Clock}'s time: DNS traffic flows on
    loopback while the test advances the time-outs.
    """

    def __init__(self, clock: Clock, reactor: Any = _reactor) -> None:
        self.clock = clock
        self._reactor = reactor

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def listenUDP(self, *args: Any, **kw: Any) -> Any:
        return self._reactor.listenUDP(*args, **kw)

    def connectTCP(self, *args: Any, **kw: Any) -> Any:
        return self._reactor.connectTCP(*args, **kw)

    def listenTCP(self, *args: Any, **kw: Any) -> Any:
        return self._reactor.listenTCP(*args, **kw)

    def addReader(self, reader: Any) -> None:
        self._reactor.addReader(reader)

    def removeReader(self, reader: Any) -> None:
        self._reactor.removeReader(reader)


async def expire_until_fired(clock: Clock, d: Deferred, step: float,
                             silent: DnsServer) -> None:
    """
    Until C{d} has fired: each time the C{silent} server has received a new
    question, advance C{clock} by C{step} so that the questions waiting for
    an answer time out (and the next tries go out).
    """
    seen = 0
    while not d.called:
        await until(lambda seen=seen: d.called or len(silent.world.queries) > seen,
                    within=10, what="a question reaching the silent server")
        if not d.called:
            seen = len(silent.world.queries)
            clock.advance(step)
