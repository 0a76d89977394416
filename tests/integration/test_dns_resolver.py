"""Tests for L{veil.dns.resolver} against a DNS server on loopback."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.dns_server import (
    NetworkWithClock,
    World,
    a,
    aaaa,
    caa,
    cname,
    dns_server_for,
    expire_until_fired,
    mx,
    txt,
)
from veil.dns.records import CaaRecord
from veil.dns.resolver import (
    ANSWER,
    LOOP,
    MAX_CHAIN,
    NODATA,
    NXDOMAIN,
    SERVFAIL,
    TIMEOUT,
    Lookup,
    StubResolver,
    system_resolvers,
)


def shop_world() -> World:
    world = World()
    world.add_zone("example.test")
    world.add_zone("veil.test")
    world.add("edge.veil.test", a("198.51.100.7"), aaaa("2001:db8::7"))
    return world


class AnswerTests(TestCase):
    """Answers, CNAME chains and the kinds of empty answers are told apart."""

    timeout = 20

    def setUp(self) -> None:
        self.server = dns_server_for(self, shop_world())
        self.world = self.server.world
        self.resolver = StubResolver(reactor, (self.server.server,), timeout=2, attempts=1)

    async def test_addresses(self) -> None:
        """A and AAAA records come back as address strings, from the resolver asked."""
        v4 = await self.resolver.lookup("edge.veil.test", "A")
        v6 = await self.resolver.lookup("EDGE.veil.test.", "AAAA")
        self.assertEqual((v4.outcome, v4.values, v4.chain), (ANSWER, ("198.51.100.7",), ()))
        self.assertEqual((v6.outcome, v6.values), (ANSWER, ("2001:db8::7",)))
        self.assertEqual(v4.server, self.server.address)
        self.assertEqual(v6.name, "edge.veil.test")

    async def test_cname_chain(self) -> None:
        """A chain across zones is followed; the records are those at its end."""
        self.world.add("shop.example.test", cname("alias.example.test"))
        self.world.add("alias.example.test", cname("edge.veil.test"))
        found = await self.resolver.lookup("shop.example.test", "A")
        self.assertEqual(found.outcome, ANSWER)
        self.assertEqual(found.chain, ("alias.example.test", "edge.veil.test"))
        self.assertEqual(found.target, "edge.veil.test")
        self.assertEqual(found.values, ("198.51.100.7",))

    async def test_resolver_that_does_not_chase(self) -> None:
        """When a resolver answers only the first CNAME, the chain's end is asked for."""
        self.world.chase = False
        self.world.add("shop.example.test", cname("edge.veil.test"))
        found = await self.resolver.lookup("shop.example.test", "A")
        self.assertEqual((found.outcome, found.chain, found.values),
                         (ANSWER, ("edge.veil.test",), ("198.51.100.7",)))
        self.assertEqual(self.world.asked("A"), ["shop.example.test", "edge.veil.test"])

    async def test_nxdomain_and_nodata(self) -> None:
        """A missing name is NXDOMAIN; a name without records of the type is NODATA."""
        self.world.add("mail.example.test", mx("mx.example.test"))
        self.world.add("_veil.deep.example.test", txt("token"))
        missing = await self.resolver.lookup("nowhere.example.test", "A")
        nodata = await self.resolver.lookup("mail.example.test", "A")
        between = await self.resolver.lookup("deep.example.test", "A")
        outside = await self.resolver.lookup("shop.unknown-tld", "A")
        self.assertEqual(missing.outcome, NXDOMAIN)
        self.assertEqual(nodata.outcome, NODATA)
        self.assertEqual(between.outcome, NODATA)  # an empty non-terminal exists
        self.assertEqual(outside.outcome, NXDOMAIN)

    async def test_nxdomain_at_the_end_of_a_chain(self) -> None:
        """A CNAME to a missing name is NXDOMAIN for the target, with the chain kept."""
        self.world.add("shop.example.test", cname("gone.example.test"))
        found = await self.resolver.lookup("shop.example.test", "A")
        self.assertEqual((found.outcome, found.chain), (NXDOMAIN, ("gone.example.test",)))

    async def test_loop(self) -> None:
        """A CNAME loop is reported as such, not followed for ever."""
        self.world.add("one.example.test", cname("two.example.test"))
        self.world.add("two.example.test", cname("one.example.test"))
        found = await self.resolver.lookup("one.example.test", "A")
        self.assertEqual(found.outcome, LOOP)
        self.assertIn("loops back to one.example.test", found.detail)
        self.assertTrue(found.failed)

    async def test_long_chain(self) -> None:
        """A chain longer than MAX_CHAIN links stops there."""
        for i in range(MAX_CHAIN + 2):
            self.world.add(f"c{i}.example.test", cname(f"c{i + 1}.example.test"))
        self.world.add(f"c{MAX_CHAIN + 2}.example.test", a("192.0.2.1"))
        found = await self.resolver.lookup("c0.example.test", "A")
        self.assertEqual(found.outcome, LOOP)
        self.assertEqual(len(found.chain), MAX_CHAIN + 1)
        self.assertIn(f"longer than {MAX_CHAIN}", found.detail)

    async def test_txt_strings(self) -> None:
        """Each TXT record comes back as the tuple of its strings."""
        self.world.add("_veil.shop.example.test", txt("v=spf1 -all"), txt("abc", "def"))
        found = await self.resolver.lookup("_veil.shop.example.test", "TXT")
        self.assertEqual(set(found.values), {("v=spf1 -all",), ("abc", "def")})

    async def test_large_answer_over_tcp(self) -> None:
        """An answer too large for UDP comes truncated, and is asked again over TCP."""
        records = [txt(f"{i:02d}" + "x" * 200) for i in range(6)]
        self.world.add("_veil.shop.example.test", *records)
        found = await self.resolver.lookup("_veil.shop.example.test", "TXT")
        self.assertEqual(found.outcome, ANSWER)
        self.assertEqual(len(found.values), 6)
        self.assertEqual([q[2] for q in self.world.queries], ["udp", "tcp"])

    async def test_caa(self) -> None:
        """CAA records, unknown to twisted.names, are decoded from their wire format."""
        self.world.add("example.test", caa(0, "issue", "letsencrypt.org"),
                       caa(128, "tbs", "unknown"))
        found = await self.resolver.lookup("example.test", "CAA")
        self.assertEqual(set(found.values), {CaaRecord(0, "issue", "letsencrypt.org"),
                                             CaaRecord(128, "tbs", "unknown")})


class FailureTests(TestCase):
    """SERVFAIL, time-outs and resolvers that are down, with the clock advanced."""

    timeout = 30

    async def test_servfail(self) -> None:
        """A resolver answering SERVFAIL gives a SERVFAIL outcome, not an exception."""
        server = dns_server_for(self, shop_world())
        server.world.mode = "servfail"
        resolver = StubResolver(reactor, (server.server,), timeout=2, attempts=2)
        found = await resolver.lookup("edge.veil.test", "A")
        self.assertEqual(found.outcome, SERVFAIL)
        self.assertEqual(found.detail, f"{server.address} answered SERVFAIL")
        self.assertEqual(len(server.world.queries), 1)  # SERVFAIL is not retried

    async def test_servfail_for_one_name(self) -> None:
        """A name the server fails for is SERVFAIL while others resolve."""
        server = dns_server_for(self, shop_world())
        server.world.servfail.add("broken.example.test")
        resolver = StubResolver(reactor, (server.server,), timeout=2, attempts=1)
        self.assertEqual((await resolver.lookup("broken.example.test", "TXT")).outcome, SERVFAIL)
        self.assertEqual((await resolver.lookup("edge.veil.test", "A")).outcome, ANSWER)

    async def test_answer_to_another_question(self) -> None:
        """An answer to a question not asked is not believed: the lookup fails."""
        server = dns_server_for(self, shop_world())
        server.world.mode = "mismatch"
        resolver = StubResolver(reactor, (server.server,), timeout=2, attempts=2)
        found = await resolver.lookup("edge.veil.test", "A")
        self.assertEqual((found.outcome, found.values), (SERVFAIL, ()))
        self.assertEqual(found.detail, f"{server.address} answered a different question")

    async def test_next_resolver_after_servfail(self) -> None:
        """After a SERVFAIL (or REFUSED) the next resolver is asked, and its answer counts."""
        bad, good = dns_server_for(self, shop_world()), dns_server_for(self, shop_world())
        bad.world.mode = "refused"
        resolver = StubResolver(reactor, (bad.server, good.server), timeout=2, attempts=2)
        found = await resolver.lookup("edge.veil.test", "A")
        self.assertEqual((found.outcome, found.server), (ANSWER, good.address))

    async def test_never_answers(self) -> None:
        """A resolver that never answers is tried `attempts` times, then it is a time-out."""
        clock = Clock()
        server = dns_server_for(self, shop_world())
        server.world.mode = "silent"
        resolver = StubResolver(NetworkWithClock(clock), (server.server,), timeout=2,
                                attempts=2)
        d = resolver.lookup("edge.veil.test", "A")
        await expire_until_fired(clock, d, 2.0, server)
        found: Lookup = await d
        self.assertEqual(found.outcome, TIMEOUT)
        self.assertEqual(found.detail, f"{server.address} did not answer within 2 s")
        self.assertEqual(clock.seconds(), 4.0)
        self.assertEqual(len(server.world.queries), 2)

    async def test_first_resolver_down(self) -> None:
        """With the first resolver down, its tries time out and the second one answers."""
        clock = Clock()
        down, up = dns_server_for(self, shop_world()), dns_server_for(self, shop_world())
        down.world.mode = "silent"
        resolver = StubResolver(NetworkWithClock(clock), (down.server, up.server),
                                timeout=1.5, attempts=2)
        d = resolver.lookup("edge.veil.test", "A")
        await expire_until_fired(clock, d, 1.5, down)
        found: Lookup = await d
        self.assertEqual((found.outcome, found.server), (ANSWER, up.address))
        self.assertEqual(clock.seconds(), 3.0)
        self.assertEqual(len(down.world.queries), 2)
        self.assertEqual(len(up.world.queries), 1)

    async def test_all_down_and_failing(self) -> None:
        """One resolver silent, one failing: the outcome is SERVFAIL and both are named."""
        clock = Clock()
        down, failing = dns_server_for(self, shop_world()), dns_server_for(self, shop_world())
        down.world.mode, failing.world.mode = "silent", "servfail"
        resolver = StubResolver(NetworkWithClock(clock), (down.server, failing.server),
                                timeout=1, attempts=1)
        d = resolver.lookup("edge.veil.test", "A")
        await expire_until_fired(clock, d, 1.0, down)
        found: Lookup = await d
        self.assertEqual(found.outcome, SERVFAIL)
        self.assertEqual(found.detail, f"{down.address} did not answer within 1 s;"
                                       f" {failing.address} answered SERVFAIL")


class SystemResolversTests(SynchronousTestCase):
    """The default resolvers come from resolv.conf, as the C library reads it."""

    def test_nameserver_lines(self) -> None:
        """Each valid nameserver line is a resolver on port 53; others are skipped."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nsearch example.test\nnameserver 10.0.0.2\n"
                    "nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver bogus\n")
        self.assertEqual(system_resolvers(path), (("10.0.0.2", 53), ("2001:db8::53", 53)))

    def test_missing_file(self) -> None:
        """Without a readable file (or any nameserver line) the resolver is 127.0.0.1:53."""
        self.assertEqual(system_resolvers(self.mktemp()), (("127.0.0.1", 53),))

    def test_no_servers(self) -> None:
        """A resolver with no servers is refused at once."""
        self.assertRaises(ValueError, StubResolver, reactor, ())
