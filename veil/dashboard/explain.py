"""
"Why was this blocked": a logged request's verdict, rule by rule.

The request log keeps, for each non-benign request, the ids of the rules
that counted, their summed severities (the anomaly score) and a redacted
excerpt of the request (L{veil.waf.verdict.excerpt}), but not which part of
the request each rule matched.  L{Explainer} finds that out again: it runs
exactly those rules (compiled into a small engine of their own, cached)
over the request rebuilt from the excerpt, at the strictest paranoia level,
and reports per rule the targets (C{args:q}, C{headers:user-agent}, ...)
and the transformed values it matched.  What the excerpt left out (a body
cut short, a masked secret) cannot be matched again: the explanation says
how complete it is.

Compiling and inspecting are CPU work (tens of milliseconds): they run on a
thread pool of one thread, never on the reactor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from veil.store.logquery import RequestRecord
from veil.waf.policy import (
    MAX_INSPECT_BODY_LIMIT,
    STRICTEST_PARANOIA,
    Exclusion,
    SitePolicy,
)
from veil.waf.request import Request
from veil.waf.rules import Rule, package_rules

#: Engines kept compiled, by rule set.
CACHED_ENGINES = 32
#: The longest matched value shown, in characters.
VALUE_LIMIT = 200


@attrs.frozen
class Hit:
    """One part of the request a rule matched, and the value it matched there."""

    target: str
    value: str | None


@attrs.frozen
class RuleExplained:
    """
    A rule that counted towards the request's score.

    @ivar reads: what the rule inspects (its target selectors).
    @ivar hits: what it matched in the request rebuilt from the excerpt
        (empty when the excerpt does not show it).
    @ivar known: whether this Veil has the rule (a rule removed since is not).
    """

    rule_id: int
    attack_class: str | None
    severity: int | None
    severity_name: str | None
    paranoia: int | None
    description: str
    reads: tuple[str, ...]
    hits: tuple[Hit, ...]
    known: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "class": self.attack_class, "severity": self.severity,
                "severity_name": self.severity_name, "paranoia": self.paranoia,
                "description": self.description, "reads": list(self.reads),
                "hits": [{"target": h.target, "value": h.value} for h in self.hits],
                "known": self.known}

    @property
    def targets(self) -> tuple[str, ...]:
        """The distinct targets it matched, in order."""
        return tuple(dict.fromkeys(h.target for h in self.hits))


@attrs.frozen
class Explanation:
    """
    @ivar analysis: C{complete} (every rule's matches were found again),
        C{partial}, C{none} (none were: the excerpt does not show them), or
        C{no_excerpt}.
    """

    rules: tuple[RuleExplained, ...]
    analysis: str


def request_from_excerpt(excerpt: str) -> Request:
    """
    The request an excerpt shows (its request line, headers and body
    start), as the WAF sees requests.
    """
    lines = excerpt.split("\n")
    method, _, target = lines[0].partition(" ")
    headers: list[tuple[bytes, bytes]] = []
    index = 1
    while index < len(lines) and lines[index]:
        name, _, value = lines[index].partition(":")
        headers.append((name.strip().encode("utf-8"), value.strip().encode("utf-8")))
        index += 1
    body = "\n".join(lines[index + 1:]).encode("utf-8")
    return Request(method.encode("utf-8") or b"GET", target.encode("utf-8") or b"/", headers,
                   body, complete=True)


def covers(rule_id: int, rule: RuleExplained, path_prefix: str | None, target: str | None,
           path: str) -> bool:
    """
    Whether an exclusion of C{rule_id} under C{path_prefix} for C{target}
    silences every match of C{rule} seen in a request for C{path}.
    """
    exclusion = Exclusion("proposal", rule_id=rule_id, path_prefix=path_prefix, target=target)
    return all(exclusion.covers(rule_id, rule.attack_class or "", path, hit.target)
               for hit in rule.hits)


class Explainer:
    """Explains logged requests (see the module's description)."""

    def __init__(self, reactor: Any, rules: Sequence[Rule] | None = None) -> None:
        self.reactor = reactor
        self._rules: dict[int, Rule] | None = (
            None if rules is None else {r.id: r for r in rules})
        self._engines: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="veil-explain")
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._pool.stop()

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.start()
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def catalogue(self) -> Deferred[dict[int, Rule]]:
        """Every rule this Veil has, by id (read once, on the pool)."""
        return self._run(self._catalogue)

    def _catalogue(self) -> dict[int, Rule]:
        if self._rules is None:
            self._rules = {r.id: r for r in package_rules()}
        return self._rules

    def explain(self, record: RequestRecord) -> Deferred[Explanation]:
        """The rules that counted for C{record}, with what each matched."""
        return self._run(self._explain, record)

    def _engine(self, rules: tuple[Rule, ...]) -> Any:
        from veil.waf.engine import Engine

        key = tuple(r.id for r in rules)
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = Engine(rules=rules)
            while len(self._engines) > CACHED_ENGINES:
                self._engines.popitem(last=False)
        else:
            self._engines.move_to_end(key)
        return engine

    def _explain(self, record: RequestRecord) -> Explanation:
        catalogue = self._catalogue()
        ids = sorted(set(record.rule_ids or ()))
        known = tuple(catalogue[i] for i in ids if i in catalogue)
        hits: dict[int, list[Hit]] = {}
        if known and record.excerpt:
            verdict = self._engine(known).inspect(
                request_from_excerpt(record.excerpt),
                SitePolicy(record.site_id or UUID(int=0), paranoia=STRICTEST_PARANOIA,
                           threshold=1000, inspect_body_limit=MAX_INSPECT_BODY_LIMIT),
                explain=True)
            for match in verdict.matches:
                value = None if match.value is None else match.value[:VALUE_LIMIT]
                found = hits.setdefault(match.rule_id, [])
                if all(h.target != match.target for h in found):
                    found.append(Hit(match.target, value))
        explained = []
        for rule_id in ids:
            rule = catalogue.get(rule_id)
            if rule is None:
                explained.append(RuleExplained(rule_id, None, None, None, None,
                                               "This rule is not in this version of Veil.",
                                               (), (), known=False))
                continue
            explained.append(RuleExplained(
                rule.id, rule.attack_class, rule.severity, rule.severity_name, rule.paranoia,
                rule.description, tuple(str(t) for t in rule.targets),
                tuple(hits.get(rule.id, ()))))
        if not record.excerpt:
            analysis = "no_excerpt"
        else:
            found = sum(1 for r in explained if r.hits)
            analysis = ("complete" if found == len(explained) and explained else
                        "none" if found == 0 else "partial")
        return Explanation(tuple(explained), analysis)
