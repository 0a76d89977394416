"""
The signature engine (DESIGN §6, stage 4): rules compiled into multi-pattern
databases, run over a request's values, scored into a L{Verdict} under the
site's policy.

Build one L{Engine} per process (compiling takes a fraction of a second)
and call L{Engine.inspect} for each request, on the reactor thread: it is
plain synchronous code over in-memory structures.

How a request is scanned
========================

Rules are grouped by their transformation chain.  Each group has one
hyperscan database holding every pattern of its rules (C{rx}, phrases,
C{contains}/C{begins}/C{ends}/C{equals}, byte ranges and the detectors'
prefilters), for each paranoia level.  For a request, the values of every
collection a group's rules read are joined into one buffer with a separator
(L{veil.waf.transforms.SEP}), the chain is applied to the buffer once
(prefixes of chains are shared between groups), and the buffer is scanned
once.  A match is attributed to the value it ends in and confirmed by
scanning that value alone, so a pattern never matches across two values
and anchors mean the value's start and end.  Only then does Python run:
target filtering, exclusions, the C{re} confirmation of the few patterns
hyperscan cannot express exactly (compiled as hyperscan prefilters), the
detectors, C{num} rules, anomaly rules and C{and} conditions.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import hyperscan
from twisted.logger import Logger

from veil.waf.operators import Detector, default_registry, operator_name
from veil.waf.policy import STRICTEST_PARANOIA, SitePolicy
from veil.waf.request import Part, Request
from veil.waf.rules import Condition, Rule, RuleError, compare, package_rules, selects
from veil.waf.transforms import SEP, SEP_STANDIN, TRANSFORMS, apply_joined
from veil.waf.verdict import Match, Verdict, judge

log = Logger()

#: A scan stops collecting after this many pattern matches (a request
#: with that many is an attack whatever the rest holds).
MAX_HITS = 4096
#: How much of a transformed value C{explain} shows.
EXPLAIN_CHARS = 200

_SEP_BYTE = SEP.encode()
_SEP_RX = re.compile(re.escape(_SEP_BYTE))
#: Up to this many matches in a scan are placed by counting separators;
#: more, by listing them once.
_FEW_HITS = 16
_DIRECT, _CONFIRM, _DETECT = 0, 1, 2

Spec = tuple[tuple[str, frozenset[str] | None], ...]


class _Action:
    """What a pattern id in a group's database stands for."""

    __slots__ = ("check", "kind", "rule")

    def __init__(self, rule: Rule, kind: int, check: Any = None) -> None:
        self.rule = rule
        self.kind = kind
        self.check = check


@attrs.define(eq=False)
class _Group:
    """The rules of one transformation chain that read the same values."""

    chain: tuple[str, ...]
    spec: Spec
    db: Any
    actions: list[_Action]
    #: The index of C{spec} among the plan's specs.
    spec_id: int = 0
    #: (text id, transformation) from the joined values (no
    #: transformation) to the whole chain; a text id names one (spec,
    #: chain prefix), so groups share the transformations they have in
    #: common.
    steps: tuple[tuple[int, Any], ...] = ()


@attrs.define(eq=False)
class _Plan:
    """
    Everything that runs, at every paranoia level: a rule above the
    request's level is skipped when it matches (so one database per group
    serves all four levels and compiles once).
    """

    groups: list[_Group]
    python_rules: list[Rule]
    anomaly_rules: dict[str, list[Rule]]
    #: The C{and} conditions of the rules that have them.
    conditions: dict[int, tuple[Condition, ...]]
    #: The groups that read whole collections or the method: every request.
    always: list[_Group] = attrs.Factory(list)
    #: The groups that read named headers only, by header name: only when
    #: the request has one of them.
    by_header: dict[str, list[_Group]] = attrs.Factory(dict)
    specs: int = 0


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
    """

    def __init__(self, rules: Sequence[Rule] | None = None,
                 detectors: Mapping[str, Detector] | None = None) -> None:
        self.rules = tuple(package_rules() if rules is None else rules)
        self.detectors = dict(default_registry() if detectors is None else detectors)
        self.unavailable: list[Unavailable] = []
        #: Rules whose pattern hyperscan cannot express: a prefilter, confirmed with C{re}.
        self.confirmed: set[int] = set()
        self._approximate: set[bytes] = set()
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

    def _unusable(self, rule: Rule) -> str | None:
        if rule.operator == "detect" and operator_name(rule.argument) not in self.detectors:
            return f"detector {operator_name(rule.argument)} is not installed"
        return None

    # -- compiling -----------------------------------------------------------------------

    def _compile(self, rules: Sequence[Rule]) -> _Plan:
        """
        Broad rules (those that read whole collections) are grouped by
        chain and all read one buffer of every value any of them reads, so
        the values are gathered and joined once per request and chains
        that share a prefix share its transformations.  Narrow rules (those
        that read named members only, such as C{headers:content-type}, or
        the method) are grouped by chain and members: their buffers are a
        value or two, and a member the request does not have costs nothing.
        """
        broad: dict[tuple[str, ...], list[Rule]] = {}
        narrow: dict[tuple[tuple[str, ...], Spec], list[Rule]] = {}
        python_rules: list[Rule] = []
        anomaly_rules: dict[str, list[Rule]] = {}
        for rule in rules:
            if rule.operator == "anomaly":
                for kind in rule.argument:
                    anomaly_rules.setdefault(kind, []).append(rule)
            elif rule.operator == "num":
                python_rules.append(rule)
            elif _narrow(rule):
                narrow.setdefault((rule.transforms, _spec([rule])), []).append(rule)
            else:
                broad.setdefault(rule.transforms, []).append(rule)
        everything = _spec([r for members in broad.values() for r in members])
        groups = [self._group(chain, everything, members) for chain, members in broad.items()]
        groups += [self._group(chain, spec, members)
                   for (chain, spec), members in narrow.items()]
        groups = [g for g in groups if g.db is not None]
        conditions = {r.id: r.conditions for r in rules if r.conditions}
        plan = _Plan(groups, python_rules, anomaly_rules, conditions)
        spec_ids: dict[Spec, int] = {}
        text_ids: dict[tuple[int, tuple[str, ...]], int] = {}
        for group in groups:
            group.spec_id = spec_ids.setdefault(group.spec, len(spec_ids))
            steps = []
            for length in range(len(group.chain) + 1):
                key = (group.spec_id, group.chain[:length])
                text_id = text_ids.setdefault(key, len(text_ids))
                steps.append((text_id, TRANSFORMS[group.chain[length - 1]] if length else None))
            group.steps = tuple(steps)
            if all(collection == "headers" and names is not None
                   for collection, names in group.spec):
                for _, names in group.spec:
                    for name in sorted(names or ()):
                        plan.by_header.setdefault(name, []).append(group)
            else:
                plan.always.append(group)
        plan.specs = len(spec_ids)
        return plan

    def _group(self, chain: tuple[str, ...], spec: Spec, rules: list[Rule]) -> _Group:
        expressions: list[bytes] = []
        flags: list[int] = []
        actions: list[_Action] = []
        for rule in rules:
            for expression, flag, action in self._patterns(rule):
                expressions.append(expression)
                flags.append(flag)
                actions.append(action)
        return _Group(chain, spec, self._database(expressions, flags, actions), actions)

    def _patterns(self, rule: Rule) -> Iterable[tuple[bytes, int, _Action]]:
        base = hyperscan.HS_FLAG_DOTALL | (0 if rule.case else hyperscan.HS_FLAG_CASELESS)
        operator, argument = rule.operator, rule.argument
        if operator == "rx":
            yield _anchored(argument).encode("utf-8"), base, _Action(rule, _DIRECT)
        elif operator in ("pm", "contains", "begins", "ends", "equals"):
            start = "(?:^|\\x1e)" if operator in ("begins", "equals") else ""
            end = "(?:$|\\x1e)" if operator in ("ends", "equals") else ""
            action = _Action(rule, _DIRECT)
            for phrase in argument:
                yield (start + _literal(phrase) + end).encode("ascii"), base, action
        elif operator == "bytes":
            ranges = "".join(f"\\x{low:02x}-\\x{high:02x}" for low, high in _without_sep(argument))
            yield f"[{ranges}]".encode("ascii"), hyperscan.HS_FLAG_DOTALL, _Action(rule, _DIRECT)
        elif operator == "detect":
            detector = self.detectors[operator_name(argument)]
            yield (_anchored(detector.prefilter).encode("utf-8"), base,
                   _Action(rule, _DETECT, detector.detect))
        else:  # pragma: no cover - the loader allows no other operator here
            raise AssertionError(operator)

    def _database(self, expressions: list[bytes], flags: list[int],
                  actions: list[_Action]) -> Any:
        """
        One database of all C{expressions}.  A pattern hyperscan cannot
        compile exactly (lookaround, back-references) is compiled as a
        prefilter (a superset) and its matches are confirmed with C{re}; a
        detector's prefilter is simply widened.
        """
        if not expressions:
            return None
        for index, expression in enumerate(expressions):
            if expression in self._approximate:
                self._approximate_pattern(index, flags, actions)
        try:
            return _compiled(expressions, flags)
        except hyperscan.error:
            pass
        for index, expression in enumerate(expressions):
            if not flags[index] & hyperscan.HS_FLAG_PREFILTER and \
                    _compile_error(expression, flags[index]) is not None:
                self._approximate.add(expression)
                self._approximate_pattern(index, flags, actions)
            if flags[index] & hyperscan.HS_FLAG_PREFILTER:
                error = _compile_error(expression, flags[index])
                if error is not None:
                    rule = actions[index].rule
                    raise RuleError(f"{rule.source}: rule {rule.id}: hyperscan cannot compile"
                                    f" its pattern, even as a prefilter: {error}")
        return _compiled(expressions, flags)

    def _approximate_pattern(self, index: int, flags: list[int], actions: list[_Action]) -> None:
        flags[index] |= hyperscan.HS_FLAG_PREFILTER
        action = actions[index]
        rule = action.rule
        if action.kind == _DIRECT:
            if rule.operator != "rx":  # pragma: no cover - literals always compile
                raise AssertionError(rule.id)
            self.confirmed.add(rule.id)
            actions[index] = _Action(rule, _CONFIRM,
                                     re.compile(rule.argument, re.DOTALL | (0 if rule.case else re.IGNORECASE)))

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
        found = _Scan(request, paranoia, explain).run(self._plan)
        if policy.exclusions and found:
            path = request.path
            found = tuple(
                attrs.evolve(m, excluded_by=excluded.id)
                if (excluded := policy.excluded(m.rule_id, m.attack_class, path, m.target))
                else m
                for m in found)
        return judge(found, policy.threshold, policy.mode, paranoia, profile, request)

    def rules_at(self, paranoia: int) -> list[Rule]:
        """The usable rules that run at this paranoia level."""
        dead = {u.rule.id for u in self.unavailable}
        return [r for r in self.rules if r.paranoia <= paranoia and r.id not in dead]


def _collect(ident: int, start: int, end: int, flags: int, hits: list[tuple[int, int]]) -> bool:
    hits.append((ident, end))
    return len(hits) >= MAX_HITS


def _run(db: Any, data: bytes, hits: list[tuple[int, int]]) -> None:
    """Scan C{data}, collecting (pattern id, end offset) into C{hits}, at most L{MAX_HITS}."""
    try:
        db.scan(data, match_event_handler=_collect, context=hits)
    except hyperscan.ScanTerminated:
        pass  # MAX_HITS reached: what was found is judged


class _Scan:
    """One request's inspection: the joined buffers and their transformations."""

    __slots__ = ("explain", "gathered", "matches", "paranoia", "request", "seen", "texts")

    def __init__(self, request: Request, paranoia: int, explain: bool) -> None:
        self.request = request
        self.paranoia = paranoia
        self.explain = explain
        self.gathered: dict[int, tuple[list[str], list[Part], list[int]]] = {}
        self.texts: dict[int, str] = {}
        self.matches: list[Match] = []
        self.seen: set[tuple[int, str]] = set()

    def run(self, plan: _Plan) -> tuple[Match, ...]:
        for group in plan.always:
            self._scan(group)
        if plan.by_header:
            done: set[int] = set()
            for name in self.request.header_index:
                for group in plan.by_header.get(name, ()):
                    if id(group) not in done:
                        done.add(id(group))
                        self._scan(group)
        paranoia = self.paranoia
        if plan.anomaly_rules:
            for kind, target in self.request.anomalies:
                for rule in plan.anomaly_rules.get(kind, ()):
                    if rule.paranoia <= paranoia:
                        self._add(rule, target, kind, "")
        for rule in plan.python_rules:
            if rule.paranoia <= paranoia:
                self._numeric(rule)
        if plan.conditions and self.matches:
            pending = {m.rule_id for m in self.matches if m.rule_id in plan.conditions}
            failed = {rule_id for rule_id in pending
                      if not all(self._holds(c) for c in plan.conditions[rule_id])}
            if failed:
                self.matches = [m for m in self.matches if m.rule_id not in failed]
        return tuple(self.matches)

    # -- values and transformations ------------------------------------------------------

    def _gather(self, group: _Group) -> tuple[list[str], list[Part], list[int]]:
        found = self.gathered.get(group.spec_id)
        if found is None:
            values: list[str] = []
            parts: list[Part] = []
            starts: list[int] = []
            request = self.request
            for collection, names in group.spec:
                for part in request.parts(collection, names):
                    if part.values:
                        starts.append(len(values))
                        parts.append(part)
                        values.extend(part.values)
            found = self.gathered[group.spec_id] = (values, parts, starts)
        return found

    def _text(self, group: _Group, values: list[str]) -> str:
        texts = self.texts
        steps = group.steps
        last = len(steps) - 1
        text = texts.get(steps[last][0])
        if text is not None:
            return text
        done = last - 1
        while done >= 0 and steps[done][0] not in texts:
            done -= 1
        if done < 0:
            text = SEP.join(values)
            if text.count(SEP) != len(values) - 1:
                text = SEP.join(v.replace(SEP, SEP_STANDIN) for v in values)
            texts[steps[0][0]] = text
            done = 0
        else:
            text = texts[steps[done][0]]
        separators = len(values) - 1
        for text_id, transform in steps[done + 1:]:
            text = apply_joined(transform, text, separators)
            texts[text_id] = text
        return text

    # -- scanning ------------------------------------------------------------------------

    def _scan(self, group: _Group) -> None:
        values, parts, starts = self._gather(group)
        if not values:
            return
        text = self._text(group, values)
        data = text.encode("utf-8", "surrogatepass")
        hits: list[tuple[int, int]] = []
        _run(group.db, data, hits)
        if not hits:
            return
        actions = group.actions
        paranoia = self.paranoia
        hits = [hit for hit in hits if actions[hit[0]].rule.paranoia <= paranoia]
        if not hits:
            return
        single = len(values) == 1
        if single:
            located = {(ident, 0) for ident, _ in hits}
            bounds = [0, len(data) + 1]
        elif len(hits) <= _FEW_HITS:
            # A match that ends on a separator ends its value (C{$} matches
            # the separator): it belongs to the value before.
            located = {(ident, data.count(_SEP_BYTE, 0, end - 1)) for ident, end in hits}
            bounds = []
        else:
            separators = [m.start() for m in _SEP_RX.finditer(data)]
            bounds = [0, *(s + 1 for s in separators), len(data) + 1]
            located = {(ident, bisect_left(separators, end - 1)) for ident, end in hits}
        pieces: list[str] | None = None
        confirmed: dict[int, set[int]] = {}
        for ident, index in sorted(located, key=lambda item: (item[1], item[0])):
            action = actions[ident]
            rule = action.rule
            part_index = bisect_right(starts, index) - 1
            part = parts[part_index]
            targets = [t for t in part.names_of(index - starts[part_index]) if rule.selects(t)]
            if not targets or all((rule.id, t) in self.seen for t in targets):
                continue
            if not single:
                inside = confirmed.get(index)
                if inside is None:
                    inside = confirmed[index] = set()
                    alone = _value_bytes(data, index, bounds)
                    alone_hits: list[tuple[int, int]] = []
                    _run(group.db, alone, alone_hits)
                    inside.update(i for i, _ in alone_hits)
                if ident not in inside:
                    continue
            detail = None
            if action.kind != _DIRECT or self.explain:
                if pieces is None:
                    pieces = text.split(SEP)
                value = pieces[index]
                if action.kind == _CONFIRM and not action.check.search(value):
                    continue
                if action.kind == _DETECT:
                    detail = action.check(value)
                    if not detail:
                        continue
                    detail = str(detail)[:64]
            shown = pieces[index] if self.explain and pieces is not None else ""
            for target in targets:
                self._add(rule, target, detail, shown)

    def _add(self, rule: Rule, target: str, detail: str | None, value: str) -> None:
        key = (rule.id, target)
        if key in self.seen:
            return
        self.seen.add(key)
        self.matches.append(Match(
            rule.id, rule.attack_class, rule.severity, target, None, detail,
            rule.transforms if self.explain else (),
            value[:EXPLAIN_CHARS] if self.explain else None))

    # -- the Python operators ------------------------------------------------------------

    def _values(self, selectors: Sequence[Any]) -> Iterable[tuple[str, str]]:
        """(target, value) for every value the selectors choose."""
        wanted: dict[str, frozenset[str] | None] = {}
        for selector in selectors:
            if selector.negated:
                continue
            if selector.name is None or wanted.get(selector.collection, ...) is None:
                wanted[selector.collection] = None
            else:
                wanted[selector.collection] = \
                    (wanted.get(selector.collection) or frozenset()) | {selector.name}
        for collection, names in wanted.items():
            for part in self.request.parts(collection, names):
                for index, value in enumerate(part.values):
                    for target in part.names_of(index):
                        if selects(selectors, target):
                            yield target, value

    def _numeric(self, rule: Rule) -> None:
        for target, value in self._values(rule.targets):
            if compare(rule.argument, _chain(rule.transforms, value)):
                self._add(rule, target, None, value if self.explain else "")

    def _holds(self, condition: Condition) -> bool:
        values = [value for _, value in self._values(condition.targets)]
        if condition.operator == "absent":
            result = not values
        else:
            result = any(_test(condition, _chain(condition.transforms, v)) for v in values)
        return result != condition.negate


def _value_bytes(data: bytes, index: int, bounds: list[int]) -> bytes:
    """The bytes of value C{index} of a joined buffer (C{bounds}: where each starts, if listed)."""
    if bounds:
        return data[bounds[index]:bounds[index + 1] - 1]
    start = 0
    for _ in range(index):
        start = data.index(_SEP_BYTE, start) + 1
    stop = data.find(_SEP_BYTE, start)
    return data[start:] if stop < 0 else data[start:stop]


def _chain(transforms: tuple[str, ...], value: str) -> str:
    for name in transforms:
        value = TRANSFORMS[name](value)
    return value


def _test(condition: Condition, value: str) -> bool:
    operator, argument = condition.operator, condition.argument
    if operator == "num":
        return compare(argument, value)
    if operator == "rx":
        return re.search(argument, value, re.DOTALL | (0 if condition.case else re.IGNORECASE)) is not None
    if not condition.case:
        value = value.lower()
        argument = tuple(a.lower() for a in argument)
    if operator in ("pm", "contains"):
        return any(a in value for a in argument)
    if operator == "begins":
        return value.startswith(argument)
    if operator == "ends":
        return value.endswith(argument)
    return value in argument


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


#: Collections whose values are few and short: a rule that reads only
#: these gets a buffer of its own.
_SMALL = ("method", "args_names", "cookies_names")


def _narrow(rule: Rule) -> bool:
    """
    Whether a rule reads only named members (C{headers:content-type}), the
    method or parameter names: such rules share small buffers of just those
    values rather than the buffer of everything, which their patterns
    (C{^\\s*\\S}, a parameter called C{session}) would match in other
    values only to be filtered out.
    """
    return all(s.name is not None or s.collection in _SMALL
               for s in rule.targets if not s.negated)


def _without_sep(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """
    Byte ranges without the separator byte, which ends every value in a
    joined buffer (a separator inside a value was replaced by
    L{veil.waf.transforms.SEP_STANDIN}, itself a control character).
    """
    sep = ord(SEP)
    out = []
    for low, high in ranges:
        if low <= sep <= high:
            if low < sep:
                out.append((low, sep - 1))
            if sep < high:
                out.append((sep + 1, high))
        else:
            out.append((low, high))
    return out


def _literal(text: str) -> str:
    """C{text} as a hyperscan expression matching its UTF-8 bytes literally."""
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"\\x{b:02x}"
                   for b in text.encode("utf-8"))


def _anchored(pattern: str) -> str:
    """
    C{pattern} with C{^} and C{$} (and C{\\A}, C{\\z}, C{\\Z}) outside
    character classes also matching at a separator, so that they anchor at
    a value's start and end in a joined buffer.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escape = pattern[i:i + 2]
            if not in_class and escape == "\\A":
                out.append("(?:^|\\x1e)")
            elif not in_class and escape in ("\\z", "\\Z"):
                out.append("(?:$|\\x1e)")
            else:
                out.append(escape)
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append(char)
            i += 1
            # A ] right after [ or [^ is a literal member.
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        if char == "^":
            out.append("(?:^|\\x1e)")
        elif char == "$":
            out.append("(?:$|\\x1e)")
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _compiled(expressions: list[bytes], flags: list[int]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=expressions, ids=list(range(len(expressions))), flags=flags)
    return db


def _compile_error(expression: bytes, flags: int) -> str | None:
    """Why hyperscan does not compile C{expression} alone, or L{None} if it does."""
    try:
        _compiled([expression], [flags])
    except hyperscan.error as e:
        return str(e)
    return None
