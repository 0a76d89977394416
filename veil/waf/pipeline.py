"""
The WAF pipeline: the stages of DESIGN §6, run for every request, in memory.

DESIGN §6 orders them: (1) IP decisions and threat-intel tiers, (2)
behaviour (to come), (3) endpoint profile, (4) signatures, (5) the site's
mode.  L{Firewall} runs them for the proxy, through its two decision
points (L{veil.proxy.server.ProxyFactory}):

  - C{head}, once a request's head is parsed and routed to a live site:
    stage 1, then stages 3-5 at once for a request without a body, with a
    body the engine does not read (images, video, archives, octet
    streams: L{veil.waf.bodies.body_kind} is L{None}), or on a site that
    holds no body (C{inspect_body_limit} 0);
  - C{body}, for an inspectable body, once the proxy holds its first
    C{inspect_body_limit} bytes (all of a smaller body) and before any
    origin connection is taken: stages 3-5 on that prefix.  A body over
    the limit is inspected on its prefix and the rest streams
    (C{body_overflow = inspect-prefix}), or is refused with 413 (C{block}):
    at once when its C{Content-Length} says so, as soon as a chunked body
    passes the limit.

Stage 1 answers C{ban}/C{block} with 403 and C{throttle} with 429;
C{scrutinize} inspects one paranoia level higher; C{log_only} (and
C{scrutinize}) mark the row C{suspicious} by C{ip} unless the signatures
say more.  Stages 3-5 are one call of the engine
(L{veil.waf.engine.Engine.inspect}), which applies the site's endpoint
profiles, paranoia level, exclusions and threshold; a malicious verdict on
a site in C{block} mode is a 403 with the request id, in C{monitor} mode
the request goes on and is logged as malicious with C{blocked} false
("would block").

What the origin will read is what is inspected:

  - a body with a C{Content-Encoding} of C{gzip} (C{x-gzip}) or C{deflate}
    (zlib or raw; several codings, gzip members) is decompressed, up to the
    inspection limit, and inspected decompressed (the origin still gets it
    as sent); a body in a coding the WAF cannot read (C{br}, C{zstd}, a
    corrupt stream) is refused with 415 in block mode;
  - a body the proxy could not hold for inspection (the body budget was
    spent, so it holds less than the limit of a body that goes on) is
    refused with 503 and C{Retry-After} in block mode, rather than judged
    on the little it holds;

both logged as suspicious, and in monitor mode forwarded after the
engine has read what it can.  A C{skip} endpoint profile applies only when
the path as sent matches it as well as the resolved one: C{/api/../static/x}
resolves to C{/static/x}, but an origin that routes the raw path serves
C{/api}.

Every outcome that is not plainly benign becomes the exchange's
L{Judgement} (classification, classifier, confidence, attack type, rule
ids, score, redacted excerpt), which the proxy writes in the request log;
benign requests leave nothing and cost the log nothing.

Each call is plain synchronous code over in-memory tables (the decision
table, the policy table, the compiled engine): the hot path never waits on
the database, and the reactor is held for one inspection at a time.  The
engine is compiled once per process, off the reactor thread, before the
proxy exists (L{compile_engine}).
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from veil.logs import Throttle
from veil.metrics import Registry
from veil.proxy.server import Judgement, Verdict
from veil.store.sites import Site
from veil.waf.bodies import body_kind
from veil.waf.decisions import DecisionTable
from veil.waf.engine import Engine
from veil.waf.policy import SitePolicy
from veil.waf.rawrequest import content_codings, decompress
from veil.waf.request import Request
from veil.waf.verdict import BENIGN, MALICIOUS, SUSPICIOUS

_log = Logger()

#: How long a throttled client is told to wait, in seconds.
THROTTLE_RETRY_AFTER = 60
#: How much more paranoid inspection is for a client under C{scrutinize}.
SCRUTINY_BOOST = 1

IP = "ip"
SIGNATURE = "signature"

#: How long a client is told to wait when its body could not be held for inspection.
BUSY_RETRY_AFTER = 1
# Why a body could not be read: (status in block mode, Retry-After, reason).
_UNREADABLE = (415, None, "content encoding")
_NOT_HELD = (503, BUSY_RETRY_AFTER, "body budget")

# What stage 1 alone says, for the log row (the confidence of an explicit
# decision is whole).
_IP_BLOCKED = Judgement(MALICIOUS, IP, 1.0)
_IP_FLAGGED = Judgement(SUSPICIOUS, IP, 1.0)


class Policies(Protocol):
    """Where the firewall finds a site's policy (L{veil.store.policies.PolicyTable})."""

    def get(self, site_id: UUID) -> SitePolicy: ...


def compile_engine(reactor: Any) -> Deferred[Engine]:
    """
    The signature engine with the package's rules, compiled on a thread of
    its own (seconds of CPU), so that the reactor keeps answering
    C{/health} and C{/ready} meanwhile.
    """
    pool = ThreadPool(minthreads=0, maxthreads=1, name="veil-waf-compile")
    pool.start()
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            pool.stop()

    # Stopped once the engine is built, or when the reactor shuts down
    # first (the pool's thread would otherwise outlive the reactor and keep
    # the process from exiting); whichever comes second does nothing.
    reactor.addSystemEventTrigger("during", "shutdown", stop)
    started = reactor.seconds()

    def compiled(engine: Engine) -> Engine:
        _log.info("WAF signature engine ready: {rules} rules ({unavailable} unavailable),"
                  " compiled in {seconds:.1f} s", rules=len(engine.rules),
                  unavailable=len(engine.unavailable), seconds=reactor.seconds() - started)
        return engine

    def done(result: Any) -> Any:
        stop()
        return result

    return deferToThreadPool(reactor, pool, Engine).addCallback(compiled).addBoth(done)


class Firewall:
    """
    The WAF stages for the proxy: L{head} and L{body} are its two hooks,
    L{body_limit} the bytes of a body it holds for a site.

    @param decisions: stage 1's table.
    @param policies: every site's policy (L{SitePolicy}), by site id.
    @param engine: the compiled signature engine, or L{None} to run stage 1
        only (C{waf.enabled = false}).
    """

    def __init__(self, decisions: DecisionTable, policies: Policies, engine: Engine | None,
                 *, clock: Any, metrics: Registry | None = None) -> None:
        self.decisions = decisions
        self.policies = policies
        self.engine = engine
        self._failures = Throttle(clock, 60.0)
        registry = metrics if metrics is not None else Registry()
        self._outcomes = registry.counter(
            "veil_waf_requests_total",
            "Requests the WAF did not find benign, by classifier, classification and outcome")

    # -- the proxy's hooks ---------------------------------------------------------------

    def body_limit(self, site: Site) -> int:
        """The body bytes held (and inspected) for a request to C{site}."""
        return self.policies.get(site.id).inspect_body_limit

    def head(self, exchange: Any) -> Verdict | None:
        """At head time: stage 1, then the signatures unless they wait for the body."""
        site = exchange.site
        boost = 0
        decision = self.decisions.match(exchange.client_ip, site.id)
        if decision is not None:
            kind = decision.type
            if kind == "ban" or kind == "block":
                exchange.judged = _IP_BLOCKED
                self._outcomes.inc(classifier=IP, classification=MALICIOUS, outcome="blocked")
                return Verdict(403, reason=f"ip decision {kind}")
            if kind == "throttle":
                exchange.judged = _IP_FLAGGED
                self._outcomes.inc(classifier=IP, classification=SUSPICIOUS, outcome="throttled")
                return Verdict(429, retry_after=THROTTLE_RETRY_AFTER,
                               reason="ip decision throttle")
            # scrutinize, log_only: on, flagged unless the signatures say more.
            exchange.judged = _IP_FLAGGED
            if kind == "scrutinize":
                boost = SCRUTINY_BOOST
        if self.engine is None:
            return None
        policy = self.policies.get(site.id)
        limit = policy.inspect_body_limit
        request = Request(exchange.method, exchange.target, exchange.headers)
        if not exchange.body_done and limit > 0 and body_kind(request.media_type[0]) is not None:
            # An inspectable body follows: judged once its start is held.
            if policy.body_overflow == "block":
                exchange.cap_body(limit)
                if exchange.page is not None:
                    return None  # refused (413)
            exchange.inspection = (policy, boost)
            return None
        if not exchange.body_done:
            request.complete = False  # a body that is not read
        return self._judge(exchange, request, policy, boost)

    def body(self, exchange: Any) -> Verdict | None:
        """At body time: the signatures on the held prefix of an inspectable body."""
        pending = exchange.inspection
        if pending is None:
            return None
        exchange.inspection = None
        policy, boost = pending
        prefix = exchange.body_prefix
        limit = policy.inspect_body_limit
        complete = exchange.body_complete
        if len(prefix) > limit:
            # One read may bring more than the limit: inspect what it says.
            prefix, complete = prefix[:limit], False
        if not complete and len(prefix) < limit:
            # Decided short of the limit on a body that goes on: the body
            # budget ran out (see veil.proxy.budget).
            request = Request(exchange.method, exchange.target, exchange.headers, prefix, False)
            return self._uncleared(exchange, request, policy, boost, _NOT_HELD)
        codings = content_codings(exchange.headers)
        if codings:
            decoded = decompress(prefix, codings, limit, complete)
            if decoded is None:
                request = Request(exchange.method, exchange.target, exchange.headers, prefix,
                                  complete)
                return self._uncleared(exchange, request, policy, boost, _UNREADABLE)
            prefix, complete = decoded
        request = Request(exchange.method, exchange.target, exchange.headers, prefix, complete)
        return self._judge(exchange, request, policy, boost)

    # -- the signatures ------------------------------------------------------------------

    def _judge(self, exchange: Any, request: Request, policy: SitePolicy,
               boost: int) -> Verdict | None:
        assert self.engine is not None
        if policy.profiles:
            policy = policy.as_sent(request.method, request.path, request.raw_path)
        try:
            verdict = self.engine.inspect(request, policy, boost=boost)
        except Exception:  # noqa: BLE001 - a bug must not take the connection down
            return self._failed(exchange, policy)
        classification = verdict.classification
        if classification == BENIGN:
            return None
        exchange.judged = Judgement(
            classification, SIGNATURE, verdict.confidence, verdict.attack_type,
            verdict.rule_ids or None, verdict.score, verdict.excerpt)
        blocked = verdict.blocked
        self._outcomes.inc(classifier=SIGNATURE, classification=classification,
                           outcome="blocked" if blocked else
                           "would block" if classification == MALICIOUS else "forwarded")
        if blocked:
            return Verdict(403, reason=f"signature {verdict.attack_type}")
        return None

    def _uncleared(self, exchange: Any, request: Request, policy: SitePolicy, boost: int,
                   why: tuple[int, int | None, str]) -> Verdict | None:
        """
        A body the WAF could not read whole (C{why}): what can be read is
        judged (an attack found there is blocked as such); otherwise the
        request is logged as suspicious and refused with C{why}'s status in
        block mode, forwarded in monitor mode.
        """
        verdict = self._judge(exchange, request, policy, boost)
        if verdict is not None:
            return verdict
        judged = exchange.judged
        if judged is None or judged.classifier != SIGNATURE:
            exchange.judged = Judgement(SUSPICIOUS, SIGNATURE, None, "protocol")
        status, retry_after, reason = why
        blocked = policy.mode == "block"
        self._outcomes.inc(classifier=SIGNATURE, classification=SUSPICIOUS,
                           outcome=f"unread {reason}, " + ("blocked" if blocked else "forwarded"))
        if blocked:
            return Verdict(status, retry_after=retry_after, reason=f"unread {reason}")
        return None

    def _failed(self, exchange: Any, policy: SitePolicy) -> Verdict | None:
        """
        The engine raised (a bug): logged, and the request is treated as one
        that could not be cleared: refused in block mode, passed in monitor
        mode, and logged as suspicious either way.
        """
        self._failures.emit(_log.failure, "engine", "The WAF engine failed on a request"
                            "{suppressed_text}")
        exchange.judged = Judgement(SUSPICIOUS, SIGNATURE)
        blocked = policy.mode == "block"
        self._outcomes.inc(classifier=SIGNATURE, classification=SUSPICIOUS,
                           outcome="failed, blocked" if blocked else "failed, forwarded")
        return Verdict(403, reason="waf failure") if blocked else None

