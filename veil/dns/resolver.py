"""
A small stub resolver on the reactor, built on C{twisted.names}' protocols.

L{StubResolver.lookup} asks the configured recursive resolvers in order.
Each gets C{attempts} tries over UDP of C{timeout} seconds each; an answer
with the truncation bit is asked again over TCP.  A time-out, or an answer
with an error code (SERVFAIL, REFUSED, ...), moves on to the next resolver;
the first NOERROR or NXDOMAIN answer is final.  CNAME chains are followed
(at most L{MAX_CHAIN} links, loops detected), re-asking for the chain's end
when a resolver did not chase it.

The result is a L{Lookup} whose C{outcome} tells the cases apart: records
found (L{ANSWER}), the name exists without records of the type (L{NODATA}),
the name does not exist (L{NXDOMAIN}), the resolvers answered with errors
(L{SERVFAIL}), none answered in time (L{TIMEOUT}), or the CNAME chain is
too long or loops (L{LOOP}).  A lookup never fails for DNS reasons.

C{twisted.names.client.Resolver} is not used: it turns NXDOMAIN answers
into errors that lose the CNAME chain, asks the next server only after a
time-out (never after SERVFAIL), and keeps TCP connections open.  Each
UDP question gets its own socket on a port the kernel picks at random (a
guessed port and transaction id are what a forged answer needs).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.defer import TimeoutError as ConnectTimeout
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError
from zope.interface import implementer

from veil.dns.records import CAA, parse_caa

_log = Logger()

ANSWER = "answer"
NODATA = "nodata"
NXDOMAIN = "nxdomain"
SERVFAIL = "servfail"
TIMEOUT = "timeout"
LOOP = "loop"

#: The record types Veil asks for, by name.
TYPES = {"A": dns.A, "AAAA": dns.AAAA, "CNAME": dns.CNAME, "TXT": dns.TXT, "MX": dns.MX,
         "NS": dns.NS, "SOA": dns.SOA, "CAA": CAA}

#: CNAME links followed at most (resolvers themselves stop at 8 to 16).
MAX_CHAIN = 8
#: Questions asked at most for one lookup (the first, then chain ends).
MAX_QUESTIONS = 4

_RCODES = {dns.EFORMAT: "FORMERR", dns.ESERVER: "SERVFAIL", dns.ENAME: "NXDOMAIN",
           dns.ENOTIMP: "NOTIMP", dns.EREFUSED: "REFUSED"}

Server = tuple[str, int]


def server_text(server: Server) -> str:
    """C{127.0.0.1:53}, or C{[2001:db8::53]:53}."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_resolvers(path: str = "/etc/resolv.conf") -> tuple[Server, ...]:
    """
    The C{nameserver} lines of C{path} (port 53), or 127.0.0.1:53 when it
    has none or cannot be read, as the C library does.  Addresses with a
    zone (C{fe80::1%eth0}) are skipped.
    """
    servers: list[Server] = []
    try:
        with open(path, "rb") as f:
            text = f.read(65536).decode("ascii", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                servers.append((ipaddress.ip_address(words[1]).compressed, dns.PORT))
            except ValueError:
                continue
    return tuple(servers) or (("127.0.0.1", dns.PORT),)


@attrs.frozen
class Lookup:
    """
    What one lookup found.

    @ivar name: the name asked for (lower case, no trailing dot).
    @ivar rtype: the record type asked for, e.g. C{"A"}.
    @ivar outcome: L{ANSWER}, L{NODATA}, L{NXDOMAIN}, L{SERVFAIL}, L{TIMEOUT}
        or L{LOOP}.
    @ivar values: for L{ANSWER}, the records at the chain's end: address
        strings for A/AAAA; a tuple of strings per TXT record; names for
        CNAME, MX and NS; the owner name for SOA; L{CaaRecord}s for CAA.
    @ivar chain: the CNAME targets followed from C{name}, in order (also
        for NODATA and NXDOMAIN, which then concern the chain's end).
    @ivar server: the resolver that gave the final answer.
    @ivar detail: for the failures, what each resolver did.
    """

    name: str
    rtype: str
    outcome: str
    values: tuple[Any, ...] = ()
    chain: tuple[str, ...] = ()
    server: str | None = None
    detail: str | None = None

    @property
    def target(self) -> str:
        """The name the records belong to: the chain's end, or C{name}."""
        return self.chain[-1] if self.chain else self.name

    @property
    def failed(self) -> bool:
        """Whether the resolvers gave no usable answer."""
        return self.outcome in (SERVFAIL, TIMEOUT, LOOP)


class _NoAnswer(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class _Controller:
    """What C{twisted.names}' protocols report to: stray messages, connections."""

    def __init__(self) -> None:
        self.made: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def messageReceived(self, message: dns.Message, protocol: Any, address: Any = None) -> None:
        _log.debug("Ignored a DNS message that answers nothing asked (id {id})", id=message.id)

    def connectionMade(self, protocol: Any) -> None:
        if not self.made.called:
            self.made.callback(None)

    def connectionLost(self, protocol: Any) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def _name(value: dns.Name) -> str:
    return value.name.decode("ascii", "replace").lower().rstrip(".")


def _value(rr: dns.RRHeader) -> Any:
    payload = rr.payload
    if rr.type == dns.A:
        return payload.dottedQuad()
    if rr.type == dns.AAAA:
        return ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, payload.address)).compressed
    if rr.type == dns.TXT:
        return tuple(part.decode("utf-8", "replace") for part in payload.data)
    if rr.type == dns.SOA:
        return _name(rr.name)
    if rr.type == CAA:
        return parse_caa(payload.data)
    return _name(payload.name)  # CNAME, MX, NS


def _values(records: Sequence[dns.RRHeader]) -> tuple[Any, ...]:
    values = []
    for rr in records:
        try:
            value = _value(rr)
        except ValueError as e:
            _log.debug("Skipped a malformed {type} record: {error}",
                       type=dns.QUERY_TYPES.get(rr.type, rr.type), error=str(e))
            continue
        if value not in values:
            values.append(value)
    return tuple(values)


def _answers(message: dns.Message) -> dict[str, list[dns.RRHeader]]:
    by_owner: dict[str, list[dns.RRHeader]] = {}
    for rr in message.answers:
        if rr.cls == dns.IN:
            by_owner.setdefault(_name(rr.name), []).append(rr)
    return by_owner


def _answers_question(message: dns.Message, query: dns.Query) -> bool:
    if not message.answer or len(message.queries) != 1:
        return False
    asked = message.queries[0]
    return asked.type == query.type and _name(asked.name) == _name(query.name)


@attrs.define(eq=False)
class StubResolver:
    """
    Lookups through recursive resolvers, on the reactor.

    @ivar reactor: provides C{IReactorUDP}, C{IReactorTCP} and
        C{IReactorTime} (its clock bounds every wait).
    @ivar servers: the resolvers, asked in this order.
    @ivar timeout: seconds to wait for one answer.
    @ivar attempts: tries per resolver before the next one.
    @ivar concurrency: questions in flight at most.
    """

    reactor: Any
    servers: tuple[Server, ...]
    timeout: float = 2.0
    attempts: int = 2
    concurrency: int = 32
    _limit: DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not self.servers:
            raise ValueError("a resolver needs at least one server")
        self._limit = DeferredSemaphore(self.concurrency)

    @classmethod
    def from_config(cls, config: Any, reactor: Any,
                    resolv_conf: str = "/etc/resolv.conf") -> StubResolver:
        """The resolver for a L{veil.config.DnsConfig}."""
        servers = config.resolvers or system_resolvers(resolv_conf)
        return cls(reactor, tuple(servers), timeout=config.timeout, attempts=config.attempts)

    @property
    def names(self) -> str:
        """The resolvers, for messages: C{127.0.0.1:53, 10.0.0.2:53}."""
        return ", ".join(server_text(s) for s in self.servers)

    def lookup(self, name: str, rtype: str) -> Deferred[Lookup]:
        """Look up C{rtype} records of C{name}, following CNAMEs."""
        return Deferred.fromCoroutine(self._lookup(name.lower().rstrip("."), rtype))

    async def _lookup(self, name: str, rtype: str) -> Lookup:
        code = TYPES[rtype]
        chain: list[str] = []
        current = name
        for _ in range(MAX_QUESTIONS):
            try:
                message, server = await self._ask(current, code)
            except _NoAnswer as e:
                return Lookup(name, rtype, e.outcome, (), tuple(chain), None, e.detail)
            records = _answers(message)
            grown = False
            while True:
                here = records.get(current, [])
                found = [rr for rr in here if rr.type == code]
                if found:
                    return Lookup(name, rtype, ANSWER, _values(found), tuple(chain), server)
                aliases = [rr for rr in here if rr.type == dns.CNAME]
                if not aliases:
                    break
                target = _name(aliases[0].payload.name)
                if target == name or target in chain or len(chain) >= MAX_CHAIN:
                    detail = ("the CNAME chain loops back to " + target
                              if target == name or target in chain
                              else f"the CNAME chain is longer than {MAX_CHAIN} links")
                    return Lookup(name, rtype, LOOP, (), tuple(chain + [target]), server,
                                  detail)
                chain.append(target)
                current = target
                grown = True
            if message.rCode == dns.ENAME:
                return Lookup(name, rtype, NXDOMAIN, (), tuple(chain), server)
            if not grown:
                return Lookup(name, rtype, NODATA, (), tuple(chain), server)
            # The answer stopped at a CNAME target without its records: ask
            # for the target (a resolver that does not chase does this).
        return Lookup(name, rtype, LOOP, (), tuple(chain), None,
                      f"no answer after {MAX_QUESTIONS} questions along the CNAME chain")

    async def _ask(self, name: str, code: int) -> tuple[dns.Message, str]:
        """
        The first NOERROR or NXDOMAIN answer to C{name}/C{code} from the
        resolvers in order, and which one gave it.

        @raise _NoAnswer: when every resolver timed out or answered an error.
        """
        query = dns.Query(name.encode("ascii"), code, dns.IN)
        problems: list[str] = []
        answered = False
        await self._limit.acquire()
        try:
            for server in self.servers:
                label = server_text(server)
                for attempt in range(self.attempts):
                    try:
                        message = await self._udp(server, query)
                        if message.trunc:
                            message = await self._tcp(server, query)
                    except (DNSQueryTimeoutError, ConnectTimeout):
                        problems.append(f"{label} did not answer within {self.timeout:g} s")
                        continue
                    except (ConnectError, OSError) as e:
                        problems.append(f"{label} could not be reached ({e})")
                        break
                    if not _answers_question(message, query):
                        answered = True
                        problems.append(f"{label} answered a different question")
                        break
                    if message.rCode in (dns.OK, dns.ENAME):
                        return message, label
                    answered = True
                    problems.append(
                        f"{label} answered {_RCODES.get(message.rCode, message.rCode)}")
                    break
        finally:
            self._limit.release()
        raise _NoAnswer(SERVFAIL if answered else TIMEOUT, "; ".join(dict.fromkeys(problems)))

    async def _udp(self, server: Server, query: dns.Query) -> dns.Message:
        host, port = server
        protocol = dns.DNSDatagramProtocol(_Controller(), reactor=self.reactor)
        protocol.noisy = False
        udp = _UdpSocket(self.reactor, protocol, ":" in host)
        try:
            return await protocol.query((host, port), [query], timeout=self.timeout)
        finally:
            udp.close()

    async def _tcp(self, server: Server, query: dns.Query) -> dns.Message:
        host, port = server
        controller = _Controller()
        protocol = dns.DNSProtocol(controller, reactor=self.reactor)
        connector = self.reactor.connectTCP(host, port, _OneConnection(protocol, controller),
                                            timeout=self.timeout)
        try:
            await controller.made.addTimeout(self.timeout, self.reactor)
        except BaseException:
            connector.disconnect()
            raise
        try:
            return await protocol.query([query], timeout=self.timeout)
        finally:
            protocol.transport.loseConnection()
            await controller.closed


@implementer(IReadDescriptor)
class _UdpSocket:
    """
    One question's own UDP socket, on a port the kernel picks at random,
    carrying C{twisted.names}' datagram protocol.  (The reactor's UDP ports
    would do, but log two lines each time one opens and closes.)
    """

    def __init__(self, reactor: Any, protocol: dns.DNSDatagramProtocol, ipv6: bool) -> None:
        self._reactor = reactor
        self._socket: socket.socket | None = socket.socket(
            socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._socket.setblocking(False)
            self._socket.bind(("::" if ipv6 else "0.0.0.0", 0))
        except OSError:
            self._socket.close()
            raise
        self.protocol = protocol
        protocol.makeConnection(self)
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self._socket is None else self._socket.fileno()

    def logPrefix(self) -> str:
        return "veil-dns-udp"

    def write(self, data: bytes, address: Server) -> None:
        if self._socket is not None:
            self._socket.sendto(data, address)

    def doRead(self) -> None:
        for _ in range(32):
            if self._socket is None:
                return
            try:
                data, address = self._socket.recvfrom(65535)
            except OSError:
                return  # nothing more to read, or an ICMP error: the query times out
            self.protocol.datagramReceived(data, address[:2])

    def connectionLost(self, reason: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is None:
            return
        self._reactor.removeReader(self)
        self._socket.close()
        self._socket = None
        self.protocol.doStop()


class _OneConnection(ClientFactory):
    """The factory of one TCP connection for one question."""

    noisy = False

    def __init__(self, protocol: dns.DNSProtocol, controller: _Controller) -> None:
        self._protocol = protocol
        self._controller = controller

    def buildProtocol(self, addr: object) -> dns.DNSProtocol:
        return self._protocol

    def clientConnectionFailed(self, connector: object, reason: Any) -> None:
        if not self._controller.made.called:
            self._controller.made.errback(reason)
