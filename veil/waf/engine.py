"""
The signature engine (DESIGN §6, stage 4): rules compiled into multi-pattern
databases, run over a request's values, scored into a L{Verdict} under the
site's policy.

Build one L{Engine} per process and call L{Engine.inspect} for each
request, on the reactor thread: it is plain synchronous code over in-memory
structures.  Compiling the package's rules takes seconds; the compiled
databases are kept on disk (L{veil.waf.dbcache}) and every later process
loads them in milliseconds.

How a request is scanned
========================

Rules are grouped in I{families}: the rules that read the same collections
(the broad rules, which read every value of a request, are one family;
rules that read named headers or the method are small families of their
own).  A family has one hyperscan database holding every pattern of its
rules (C{rx}, phrases, C{contains}/C{begins}/C{ends}/C{equals}, byte ranges
and the detectors' prefilters) whatever their transformation chains, and a
small one of the patterns that tell which values a transformation could
change.  For a request, the values the family reads are scanned together,
untransformed, once by each; only values a chain changes are transformed
and scanned again for that chain's rules (L{veil.waf.scanner}).  What each
value matched is remembered, so the header values, cookie names and JSON
keys that come back request after request are looked up, not scanned.
Only then does Python run: target filtering, paranoia levels, exclusions,
the C{re} confirmation of the few patterns hyperscan cannot express
exactly, the detectors, C{num} rules, anomaly rules and C{and} conditions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import hyperscan
from twisted.logger import Logger

from veil.waf.dbcache import DatabaseCache, cache_key, default_directory
from veil.waf.operators import Detector, default_registry, operator_name
from veil.waf.patterns import (
    CHANGE_FLAGS,
    CONFIRMED,
    END,
    START,
    byte_class,
    literal,
    per_value,
    separated,
    split_words,
)
from veil.waf.policy import STRICTEST_PARANOIA, SitePolicy
from veil.waf.request import COLLECTIONS, SOURCES, VALUES, Request
from veil.waf.rules import (
    Condition,
    Rule,
    RuleError,
    collections_of,
    compare,
    package_rules,
    selects,
)
from veil.waf.scanner import (
    CONFIRM,
    DETECT,
    DIRECT,
    MAX_HITS,
    Action,
    Family,
    Hit,
    compile_confirmation,
    seen_at,
)
from veil.waf.transforms import CHANGES, TRANSFORMS
from veil.waf.verdict import Match, Verdict, judge

__all__ = ["EXPLAIN_CHARS", "MAX_HITS", "Engine", "Unavailable"]

log = Logger()

#: Requests without a body remembered with what they matched (see
#: L{Engine.inspect}); the memo starts afresh when it is full.
RECENT_REQUESTS = 4096

#: How much of a transformed value C{explain} shows.
EXPLAIN_CHARS = 200

Spec = tuple[tuple[str, frozenset[str] | None], ...]
Getters = tuple[tuple[str, Any, frozenset[str] | None, set[str]], ...]
#: A family, the values it has placed at a paranoia level and those hot
#: there in some collection, and its getters.
Step = tuple[Family, set[str], set[str], Getters]

#: The default for L{Engine}'s C{cache_dir}: the user's cache directory
#: for the package's rules, no cache for rules given by the caller.
USER_CACHE: Any = object()


@attrs.define(eq=False)
class _Plan:
    """
    Everything that runs, at every paranoia level: a rule above the
    request's level is skipped when it matches (so one database per family
    serves all four levels and compiles once).
    """

    families: list[Family]
    python_rules: list[Rule]
    anomaly_rules: dict[str, list[Rule]]
    #: The C{and} conditions of the rules that have them.
    conditions: dict[int, tuple[_Condition, ...]]
    #: Per paranoia level and request shape (L{veil.waf.request.Request.shape}):
    #: the families that read whole collections or the method, with the
    #: values they placed at that level and the collections that can have
    #: values in a request of that shape, as (collection, its values'
    #: function, names, the values hot there at that level).
    steps: dict[tuple[int, int], tuple[Step, ...]] = attrs.Factory(dict)
    #: The families that read named headers only, by paranoia level and
    #: header name: only when the request has one of them.
    by_header: dict[tuple[int, str], list[Step]] = attrs.Factory(dict)


class _Expressions:
    """The expressions of one database, each once, with their flags and extended parameters."""

    def __init__(self) -> None:
        self.expressions: list[bytes] = []
        self.flags: list[int] = []
        self.params: list[tuple[int, int]] = []
        self._index: dict[tuple[bytes, int, tuple[int, int]], int] = {}

    def add(self, expression: str, flag: int, min_length: int = 0) -> int:
        """The id of C{expression} with these flags (a new one, or the one it already has)."""
        params = (min_length and hyperscan.HS_EXT_FLAG_MIN_LENGTH, min_length)
        key = (expression.encode("utf-8"), flag, params)
        ident = self._index.get(key)
        if ident is None:
            ident = self._index[key] = len(self.expressions)
            self.expressions.append(key[0])
            self.flags.append(flag)
            self.params.append(params)
        return ident


@attrs.frozen
class Unavailable:
    """A rule that cannot run here, and why."""

    rule: Rule
    reason: str


class Engine:
    """
    Compiled rules, ready to inspect requests.

    C{rules} default to the package's rules, C{detectors} to the installed
    built-in detectors (L{veil.waf.operators.default_registry}).
    C{cache_dir} is where compiled databases are kept (L{veil.waf.dbcache});
    by default the user's cache directory when the rules are the package's,
    none otherwise; L{None} for none.  C{fast} false inspects every value
    with every chain literally, without the change flags or the memo
    (L{veil.waf.scanner.Family.reference}): the same verdicts, slowly, for
    tests that check the fast path.
    """

    def __init__(self, rules: Sequence[Rule] | None = None,
                 detectors: Mapping[str, Detector] | None = None, *,
                 cache_dir: Path | str | None = USER_CACHE, fast: bool = True) -> None:
        if cache_dir is USER_CACHE:
            cache_dir = default_directory() if rules is None else None
        self.rules = tuple(package_rules() if rules is None else rules)
        self.detectors = dict(default_registry() if detectors is None else detectors)
        self.fast = fast
        self.unavailable: list[Unavailable] = []
        #: Rules whose pattern hyperscan cannot express: a prefilter, confirmed with C{re}.
        self.confirmed: set[int] = set()
        self._cache = DatabaseCache(cache_dir) if cache_dir is not None else None
        usable = []
        for rule in self.rules:
            reason = self._unusable(rule)
            if reason is None:
                usable.append(rule)
            else:
                self.unavailable.append(Unavailable(rule, reason))
                log.warn("WAF rule {rule_id} is not available: {reason}",  # noqa: G010 - Twisted
                         rule_id=rule.id,
                         reason=reason)
        self._plan = self._compile(usable)
        #: What recent requests without a body matched, by paranoia level
        #: and the request as received.
        self._recent: dict[tuple, tuple[Match, ...]] = {}

    def _unusable(self, rule: Rule) -> str | None:
        if rule.operator == "detect" and operator_name(rule.argument) not in self.detectors:
            return f"detector {operator_name(rule.argument)} is not installed"
        return None

    # -- compiling -----------------------------------------------------------------------

    def _compile(self, rules: Sequence[Rule]) -> _Plan:
        """
        Broad rules (those that read whole collections) are one family,
        all reading one buffer of every value any of them reads.  Narrow
        rules (those that read named members only, such as
        C{headers:content-type}, the method or parameter names) are grouped
        by what they read: their buffers are a value or two, and a member
        the request does not have costs nothing.
        """
        broad: list[Rule] = []
        narrow: dict[Spec, list[Rule]] = {}
        python_rules: list[Rule] = []
        anomaly_rules: dict[str, list[Rule]] = {}
        for rule in rules:
            if rule.operator == "anomaly":
                for kind in rule.argument:
                    anomaly_rules.setdefault(kind, []).append(rule)
            elif rule.operator == "num":
                python_rules.append(rule)
            elif _narrow(rule):
                narrow.setdefault(_spec([rule]), []).append(rule)
            else:
                broad.append(rule)
        members = ([(_spec(broad), broad)] if broad else []) + list(narrow.items())
        families = [f for f in (self._family(spec, rules) for spec, rules in members)
                    if f is not None]
        conditions = {r.id: tuple(_Condition(c) for c in r.conditions)
                      for r in rules if r.conditions}
        plan = _Plan(families, python_rules, anomaly_rules, conditions)
        always: list[Family] = []
        levels = range(1, STRICTEST_PARANOIA + 1)
        for family in families:
            if all(collection == "headers" and names is not None
                   for collection, names in family.spec):
                for level in levels:
                    getters = tuple(("headers", VALUES["headers"], names,
                                     family.hot_at(level, "headers"))
                                    for _, names in family.spec)
                    for _, names in family.spec:
                        for name in sorted(names or ()):
                            plan.by_header.setdefault((level, name), []).append(
                                (family, family.placed(level), family.warm_at(level), getters))
            else:
                always.append(family)
        for level in levels:
            for shape in range(8):
                steps = []
                for family in always:
                    getters = tuple((collection, VALUES[collection], names,
                                     family.hot_at(level, collection))
                                    for collection, names in family.spec
                                    if collection not in SOURCES or SOURCES[collection] & shape)
                    if getters:
                        steps.append((family, family.placed(level), family.warm_at(level),
                                      getters))
                plan.steps[level, shape] = tuple(steps)
        return plan

    def _family(self, spec: Spec, rules: list[Rule]) -> Family | None:
        chains = list(dict.fromkeys(rule.transforms for rule in rules))
        patterns = _Expressions()
        actions: list[list[Action]] = []
        for order, rule in enumerate(rules):
            chain = chains.index(rule.transforms)
            shared: dict[int, Action] = {}
            for expression, flag, kind, check in self._patterns(rule):
                action = shared.get(kind)
                if action is None:
                    rules_out = self.detectors[operator_name(rule.argument)].rules_out \
                        if kind == DETECT else None
                    action = shared[kind] = Action(rule, kind, check, chain, order, rules_out)
                ident = patterns.add(expression, flag)
                if ident == len(actions):
                    actions.append([])
                actions[ident].append(action)
        if not patterns.expressions:
            return None
        flags = _Expressions()
        masks: list[int] = []
        confirms: dict[int, Any] = {}
        always_dirty = 0
        for name in dict.fromkeys(name for chain in chains for name in chain):
            mask = sum(1 << i for i, chain in enumerate(chains) if name in chain)
            if name not in CHANGE_FLAGS:
                always_dirty |= mask
                continue
            for expression, min_length in CHANGE_FLAGS[name]:
                form = expression if min_length else per_value(expression)
                ident = flags.add(form, hyperscan.HS_FLAG_DOTALL, min_length)
                if ident == len(masks):
                    masks.append(0)
                masks[ident] |= mask
                if name in CONFIRMED:
                    confirms[ident] = CHANGES[name]
        db, prefiltered = self._database(patterns, actions)
        for ident in prefiltered:
            actions[ident] = [self._approximate(action) for action in actions[ident]]
        flag_db = self._database(flags, None)[0] if flags.expressions else None
        return Family(spec, chains, db, [tuple(a) for a in actions], flag_db, masks,
                      always_dirty, [confirms.get(i) for i in range(len(masks))])

    def _patterns(self, rule: Rule) -> Iterable[tuple[str, int, int, Any]]:
        """(expression, hyperscan flags, action kind, check) for each pattern of C{rule}."""
        base = hyperscan.HS_FLAG_DOTALL | (0 if rule.case else hyperscan.HS_FLAG_CASELESS)
        operator, argument = rule.operator, rule.argument
        if operator == "rx":
            pattern = separated(argument)
            if not pattern.exact:
                # Lookaround and other constructs the rewriting does not know:
                # a hyperscan prefilter (anchors aside), confirmed on the value
                # alone with re.
                self.confirmed.add(rule.id)
                yield pattern.expression, base | hyperscan.HS_FLAG_PREFILTER, CONFIRM, \
                    compile_confirmation(rule)
            elif pattern.anchored_end:
                yield pattern.expression, base, DIRECT, None
            else:
                for part in split_words(pattern.expression):
                    yield per_value(part), base, DIRECT, None
        elif operator in ("pm", "contains", "begins", "ends", "equals"):
            start = START if operator in ("begins", "equals") else ""
            end = END if operator in ("ends", "equals") else ""
            for phrase in argument:
                expression = start + literal(phrase) + end
                yield (expression if end else per_value(expression)), base, DIRECT, None
        elif operator == "bytes":
            yield per_value(byte_class(argument)), hyperscan.HS_FLAG_DOTALL, DIRECT, None
        elif operator == "detect":
            detector = self.detectors[operator_name(argument)]
            pattern = separated(detector.prefilter)
            expression = pattern.expression
            if pattern.exact and not pattern.anchored_end:
                expression = per_value(expression)
            yield expression, base, DETECT, detector.detect
        else:  # pragma: no cover - the loader allows no other operator here
            raise AssertionError(operator)

    def _approximate(self, action: Action) -> Action:
        """The action of a pattern compiled as a hyperscan prefilter: confirmed with C{re}."""
        if action.kind != DIRECT:
            return action  # already confirmed, or a detector's prefilter, simply widened
        rule = action.rule
        if rule.operator != "rx":  # pragma: no cover - literals always compile
            raise AssertionError(rule.id)
        self.confirmed.add(rule.id)
        return Action(rule, CONFIRM, compile_confirmation(rule), action.chain, action.order,
                      action.rules_out)

    def _database(self, expressions: _Expressions,
                  actions: list[list[Action]] | None) -> tuple[Any, list[int]]:
        """
        One database of all C{expressions} (from the cache if it has it),
        and the ids of those hyperscan cannot compile exactly (lookaround,
        back-references): they are compiled as prefilters (a superset) and
        their matches are confirmed with C{re}.
        """
        patterns, flags, params = expressions.expressions, expressions.flags, expressions.params
        ids = list(range(len(patterns)))

        def build() -> tuple[Any, dict]:
            try:
                return _compiled(patterns, flags, params), {"prefilter": []}
            except hyperscan.error:
                pass
            prefiltered = _prefilters(patterns, flags, params, actions)
            final = [f | hyperscan.HS_FLAG_PREFILTER if i in prefiltered else f
                     for i, f in enumerate(flags)]
            return _compiled(patterns, final, params), {"prefilter": sorted(prefiltered)}

        if self._cache is None:
            db, metadata = build()
        else:
            key = cache_key(patterns, flags, ids, params, hyperscan.HS_MODE_BLOCK)
            db, metadata = self._cache.load_or_compile(key, build)
        return db, [int(i) for i in metadata.get("prefilter", ())]

    # -- inspecting ----------------------------------------------------------------------

    def inspect(self, request: Request, policy: SitePolicy, boost: int = 0,
                explain: bool = False) -> Verdict:
        """
        The verdict on C{request} under C{policy}: its endpoint profiles
        (C{skip} inspects nothing, C{deep} inspects at the strictest
        paranoia), paranoia level (raised by C{boost}, e.g. 1 for a client
        under a C{scrutinize} decision), exclusions and threshold.  With
        C{explain}, each match carries the transformed value it matched.
        """
        profile = "normal"
        if policy.profiles:
            profile = policy.profile_for(request.method, request.path)
            if profile == "skip":
                return judge((), policy.threshold, policy.mode, policy.paranoia, profile, None)
        paranoia = STRICTEST_PARANOIA if profile == "deep" else \
            max(1, min(STRICTEST_PARANOIA, policy.paranoia + boost))
        # What the same request (method, target, every header in order, no
        # body) matched at this level, if it came recently: a poll, a health
        # check or a visitor's repeated request costs a lookup, not a scan.
        # Matches depend on nothing else; explained ones carry values.
        key = request.key(paranoia) if not explain and request.bodiless else None
        recent = self._recent
        found = recent.get(key) if key is not None else None
        if found is None:
            found = _Scan(request, paranoia, explain, self.fast).run(self._plan)
            if key is not None:
                if len(recent) >= RECENT_REQUESTS:
                    recent.clear()
                recent[key] = found
        if policy.exclusions and found:
            path = request.path
            found = tuple(
                attrs.evolve(m, excluded_by=excluded.id)
                if (excluded := policy.excluded(m.rule_id, m.attack_class, path, m.target))
                else m
                for m in found)
        return judge(found, policy.threshold, policy.mode, paranoia, profile, request)

    def forget(self) -> None:
        """Empty the memos of what requests and values matched (they refill as requests come)."""
        self._recent.clear()
        for family in self._plan.families:
            family.forget()

    def rules_at(self, paranoia: int) -> list[Rule]:
        """The usable rules that run at this paranoia level."""
        dead = {u.rule.id for u in self.unavailable}
        return [r for r in self.rules if r.paranoia <= paranoia and r.id not in dead]


class _Scan:
    """One request's inspection."""

    __slots__ = ("conditions", "explain", "fast", "held", "matches", "paranoia", "request",
                 "seen")

    def __init__(self, request: Request, paranoia: int, explain: bool, fast: bool) -> None:
        self.request = request
        self.paranoia = paranoia
        self.explain = explain
        self.fast = fast
        self.matches: list[Match] = []
        self.seen: set[tuple[int, str]] = set()
        #: The C{and} conditions of rules, and whether they held (each is
        #: tested once, when its rule first matches).
        self.conditions: dict[int, tuple[_Condition, ...]] = {}
        self.held: dict[int, bool] = {}

    def run(self, plan: _Plan) -> tuple[Match, ...]:
        request = self.request
        self.conditions = plan.conditions
        level = self.paranoia
        family = self._family if self.fast else self._reference
        for step in plan.steps[level, request.shape]:
            family(*step)
        if plan.by_header:
            by_header = plan.by_header
            done: list[Family] = []
            for name, _ in request.headers:
                for step in by_header.get((level, name), ()):
                    if step[0] not in done:
                        done.append(step[0])
                        family(*step)
        paranoia = self.paranoia
        if plan.anomaly_rules:
            for kind, target in request.anomalies:
                for rule in plan.anomaly_rules.get(kind, ()):
                    if rule.paranoia <= paranoia:
                        self._add(rule, target, kind, "")
        for rule in plan.python_rules:
            if rule.paranoia <= paranoia:
                self._numeric(rule)
        return tuple(self.matches)

    def _family(self, family: Family, placed: set[str], warm: set[str], getters: Getters) -> None:
        """
        The values of C{getters} placed by C{family} (those it has not
        placed at this level yet are looked up or scanned, together), then
        reported where they are hot.  The values of every collection are
        taken as one set: the new ones are one set difference, the hot ones
        one intersection; only collections that have a hot value are looked
        at further.
        """
        request = self.request
        found = []
        everything: set[str] = set()
        for getter in getters:
            values = getter[1](request, getter[2])
            if values:
                everything.update(values)
                found.append((getter, values))
        if not found:
            return
        absent = everything.difference(placed)
        transient = family.learn(self.paranoia, everything, absent) if absent else None
        if warm:
            warm = everything.intersection(warm)
            if warm:
                for (collection, _, names, hot), values in found:
                    if not hot.isdisjoint(warm):
                        matched = hot.intersection(values)
                        if matched:
                            self._hits(collection, names, matched, family.cache, hot)
        if transient:
            family.drop(self.paranoia, transient)

    def _reference(self, family: Family, placed: set[str], warm: set[str],
                   getters: Getters) -> None:
        """L{_family} the literal way: every value computed by L{Family.reference}, nothing kept."""
        request = self.request
        level = self.paranoia
        for collection, values_of, names, _ in getters:
            values = values_of(request, names)
            if values:
                entries = {}
                for value in set(values):
                    entry = seen_at(family.reference(value), level, collection)
                    if entry:
                        entries[value] = entry
                if entries:
                    self._hits(collection, names, set(entries), entries, set())

    def _hits(self, collection: str, names: frozenset[str] | None, matched: set[str],
              entries: dict[str, tuple[Hit, ...]], hot: set[str]) -> None:
        """
        Report what the values of one collection in C{matched} matched,
        with their target names.  A value whose hits all fail there (its
        detectors said no) leaves the C{hot} set.
        """
        level = self.paranoia
        for part in COLLECTIONS[collection](self.request, names):
            for index, value in enumerate(part.values):
                if value not in matched:
                    continue
                targets_of = part.names_of(index)
                live = False
                for hit in entries[value]:
                    action = hit.action
                    rule = action.rule
                    if rule.paranoia > level or collection not in action.collections:
                        continue
                    detail = None
                    if action.kind == DETECT:
                        detail = hit.detected()
                        if detail is None:
                            continue
                    live = True
                    targets = [t for t in targets_of if action.selects(t)]
                    if not targets:
                        continue
                    shown = hit.text if self.explain else ""
                    for target in targets:
                        self._add(rule, target, detail, shown)
                if not live:
                    hot.discard(value)

    def _add(self, rule: Rule, target: str, detail: str | None, value: str) -> None:
        key = (rule.id, target)
        if key in self.seen:
            return
        self.seen.add(key)
        conditions = self.conditions.get(rule.id)
        if conditions is not None:
            held = self.held.get(rule.id)
            if held is None:
                held = self.held[rule.id] = all(c.holds(self) for c in conditions)
            if not held:
                return
        self.matches.append(Match(
            rule.id, rule.attack_class, rule.severity, target, None, detail,
            rule.transforms if self.explain else (),
            value[:EXPLAIN_CHARS] if self.explain else None))

    # -- the Python operators ------------------------------------------------------------

    def _values(self, selectors: Sequence[Any]) -> Iterable[tuple[str, str]]:
        """(target, value) for every value the selectors choose."""
        for collection, names in collections_of(selectors).items():
            for part in self.request.parts(collection, names):
                for index, value in enumerate(part.values):
                    for target in part.names_of(index):
                        if selects(selectors, target):
                            yield target, value

    def _numeric(self, rule: Rule) -> None:
        for target, value in self._values(rule.targets):
            if compare(rule.argument, _chain(rule.transforms, value)):
                self._add(rule, target, None, value if self.explain else "")


def _chain(transforms: tuple[str, ...], value: str) -> str:
    for name in transforms:
        value = TRANSFORMS[name](value)
    return value


class _Condition:
    """
    A rule's C{and} condition, ready to test: the values it reads are
    taken by the collections' value functions when its targets are plain
    (no negated selector), and its operator's argument is prepared once.
    """

    __slots__ = ("condition", "getters", "phrases", "search")

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self.getters: list[tuple[Any, frozenset[str] | None]] | None = None
        if not any(s.negated for s in condition.targets):
            self.getters = [(VALUES[collection], names)
                            for collection, names in collections_of(condition.targets).items()]
        operator, argument = condition.operator, condition.argument
        self.search = re.compile(argument, re.DOTALL | (0 if condition.case else re.IGNORECASE)) \
            .search if operator == "rx" else None
        self.phrases: tuple[str, ...] = ()
        if operator in ("pm", "contains", "begins", "ends", "equals"):
            self.phrases = tuple(argument) if condition.case else \
                tuple(a.lower() for a in argument)

    def holds(self, scan: _Scan) -> bool:
        """Whether the condition holds for the request of C{scan}."""
        condition = self.condition
        if self.getters is not None:
            request = scan.request
            values = [v for values_of, names in self.getters for v in values_of(request, names)]
        else:
            values = [value for _, value in scan._values(condition.targets)]
        if condition.operator == "absent":
            result = not values
        else:
            transforms = condition.transforms
            result = any(self._test(_chain(transforms, v) if transforms else v) for v in values)
        return result != condition.negate

    def _test(self, value: str) -> bool:
        operator = self.condition.operator
        if operator == "rx":
            assert self.search is not None
            return self.search(value) is not None
        if operator == "num":
            return compare(self.condition.argument, value)
        phrases = self.phrases
        if not self.condition.case:
            value = value.lower()
        if operator in ("pm", "contains"):
            return any(a in value for a in phrases)
        if operator == "begins":
            return value.startswith(phrases)
        if operator == "ends":
            return value.endswith(phrases)
        return value in phrases


# -- patterns ------------------------------------------------------------------------------


def _spec(rules: Iterable[Rule]) -> Spec:
    """The collections (all members, or the named ones) that C{rules} read, in a stable order."""
    wanted: dict[str, frozenset[str] | None] = {}
    for rule in rules:
        for collection, names in rule.collections().items():
            if collection in wanted and wanted[collection] is None or names is None:
                wanted[collection] = None
            else:
                wanted[collection] = (wanted.get(collection) or frozenset()) | names
    return tuple(sorted(wanted.items(), key=lambda item: item[0]))


#: Ordinary values of every kind: a pattern that matches one of them would
#: match nearly every value of a request.
_PROBES = ("1", "42", "a", "x", "true", "GET", "/", "/index.html", "text/html",
           "gzip, deflate, br", "en-US,en;q=0.9", "hello world", "max-age=0")


def _narrow(rule: Rule) -> bool:
    """
    Whether a rule gets a small family of its own instead of its place in
    the family of everything: rules that read the method, and rules that
    read only named headers (C{headers:content-length}) whose pattern
    matches ordinary values (C{^\\s*\\S}, C{^\\s*0*[1-9]}), which in the
    shared buffer would match nearly every value of every request, to be
    filtered out only after a call into Python.  Other named-header rules
    (user agents of scanners) read values the family of everything reads
    anyway, at no cost.
    """
    chosen = [s for s in rule.targets if not s.negated]
    if any(s.collection == "method" for s in chosen):
        return all(s.collection == "method" or (s.collection == "headers" and s.name)
                   for s in chosen)
    if not all(s.collection == "headers" and s.name is not None for s in chosen):
        return False
    return any(_matches(rule, probe) for probe in _PROBES)


def _matches(rule: Rule, value: str) -> bool:
    """Whether C{rule}'s operator matches C{value} untransformed (C{re}'s reading)."""
    operator, argument = rule.operator, rule.argument
    if operator in ("rx", "pm", "contains", "begins", "ends", "equals"):
        return _Condition(Condition((), (), operator, argument, False, rule.case))._test(value)
    if operator == "bytes":
        return any(low <= byte <= high for byte in value.encode() for low, high in argument)
    return operator == "detect"


def _compiled(expressions: list[bytes], flags: list[int],
              params: list[tuple[int, int]]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=expressions, ids=list(range(len(expressions))), flags=flags,
               ext=[hyperscan.ExpressionExt(flags=flag, min_offset=0, max_offset=0,
                                            min_length=length, edit_distance=0,
                                            hamming_distance=0)
                    for flag, length in params])
    return db


def _prefilters(expressions: list[bytes], flags: list[int], params: list[tuple[int, int]],
                actions: list[list[Action]] | None) -> set[int]:
    """The patterns that compile only as prefilters; L{RuleError} for one that does not even then."""
    found = set()
    for index, expression in enumerate(expressions):
        if _compile_error(expression, flags[index], params[index]) is None:
            continue
        error = _compile_error(expression, flags[index] | hyperscan.HS_FLAG_PREFILTER,
                               params[index])
        if error is not None:
            rule = actions[index][0].rule if actions and actions[index] else None
            where = f"{rule.source}: rule {rule.id}" if rule else "a change flag"
            raise RuleError(f"{where}: hyperscan cannot compile its pattern, even as a"
                            f" prefilter: {error}")
        found.add(index)
    return found


def _compile_error(expression: bytes, flags: int, params: tuple[int, int]) -> str | None:
    """Why hyperscan does not compile C{expression} alone, or L{None} if it does."""
    try:
        _compiled([expression], [flags], [params])
    except hyperscan.error as e:
        return str(e)
    return None
