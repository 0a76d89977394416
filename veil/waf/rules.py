"""
Signature rules: their format, loading and checking.

Rules are data: one TOML file per attack class under C{veil/waf/rules/},
shipped with the package.  A file names its class and may give defaults for
its rules' C{targets}, C{transforms} and C{tags}; each C{[[rule]]} has:

    id           unique integer
    severity     critical (5), error (4), warning (3) or notice (2)
    paranoia     1-4: the rule runs at this paranoia level and above
    targets      what it reads: C{args}, C{headers:user-agent},
                 C{!headers:referer} (not that one), ... (see
                 L{veil.waf.policy})
    transforms   applied in order before the operator (L{TRANSFORMS})
    one operator:
        rx = 'regex'             a regular expression (case-insensitive
                                 unless C{case = true}; C{^} and C{$} are
                                 the value's start and end)
        pm = ['a', 'b']          any of these phrases
        contains / begins / ends / equals = 'text' (or a list: any of them)
        bytes = '0-8,11,14-31'   any byte of the value's UTF-8 in these ranges
        num = '> 4096'           the value as a number (<, <=, >, >=, ==, !=)
        detect = 'sqli'          a detector (L{veil.waf.operators})
        anomaly = 'json'         a parse anomaly of the request
                                 (L{veil.waf.bodies.ANOMALIES})
    description  what it detects, for people
    tags         OWASP category, CWE, ...
    and          optional extra conditions, all of which must hold:
                 [[rule.and]] with targets, transforms, one of rx, pm,
                 contains, begins, ends, equals, num, or C{absent = true}
                 (none of the targets is present), and C{not = true} to
                 invert it.

The pattern operators (C{rx}, C{pm}, C{contains}, C{begins}, C{ends},
C{equals}, C{bytes}, and the prefilter of C{detect}) are compiled into
multi-pattern databases (L{veil.waf.engine}); C{num}, C{anomaly} and the
C{and} conditions run in Python.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import attrs

from veil.errors import VeilError
from veil.waf.bodies import ANOMALIES
from veil.waf.policy import ATTACK_CLASSES, STRICTEST_PARANOIA, TARGET_COLLECTIONS
from veil.waf.transforms import PER_VALUE_ONLY, TRANSFORMS

SEVERITIES = {"critical": 5, "error": 4, "warning": 3, "notice": 2}
SEVERITY_NAMES = {score: name for name, score in SEVERITIES.items()}

#: The operators of a rule, and of an C{and} condition.
PATTERN_OPERATORS = ("rx", "pm", "contains", "begins", "ends", "equals", "bytes")
OPERATORS = (*PATTERN_OPERATORS, "num", "detect", "anomaly")
CONDITION_OPERATORS = ("rx", "pm", "contains", "begins", "ends", "equals", "num", "absent")

_RULE_KEYS = frozenset({"id", "severity", "paranoia", "targets", "transforms", "description",
                        "tags", "and", "case", *OPERATORS})
_CONDITION_KEYS = frozenset({"targets", "transforms", "not", "case", *CONDITION_OPERATORS})
_FILE_KEYS = frozenset({"class", "targets", "transforms", "tags", "rule"})
_NUMERIC = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")
_BYTE_RANGE = re.compile(r"^\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?$")


class RuleError(VeilError):
    """A rule file is invalid; the message names the file and the rule."""


@attrs.frozen
class Selector:
    """One entry of a rule's C{targets}."""

    collection: str
    name: str | None = None
    negated: bool = False

    def covers(self, collection: str, name: str | None) -> bool:
        return self.collection == collection and (self.name is None or self.name == name)

    def __str__(self) -> str:
        text = self.collection if self.name is None else f"{self.collection}:{self.name}"
        return "!" + text if self.negated else text


def parse_selector(text: str) -> Selector:
    """C{args}, C{headers:User-Agent} or C{!cookies:theme}; raises L{ValueError}."""
    negated = text.startswith("!")
    body = text[1:] if negated else text
    collection, colon, name = body.strip().partition(":")
    if collection not in TARGET_COLLECTIONS:
        raise ValueError(f"unknown target collection {collection!r}")
    if colon and not name:
        raise ValueError(f"target {text!r} names no member")
    if collection == "headers":
        name = name.lower()
    return Selector(collection, name if colon else None, negated)


def collections_of(selectors: Iterable[Selector]) -> dict[str, frozenset[str] | None]:
    """
    The collections that C{selectors} read (negated ones aside), each with
    all its members (L{None}) or only the names they give.
    """
    out: dict[str, frozenset[str] | None] = {}
    for selector in selectors:
        if selector.negated:
            continue
        if selector.name is None:
            out[selector.collection] = None
        elif selector.collection not in out or out[selector.collection] is not None:
            known = out.get(selector.collection) or frozenset()
            out[selector.collection] = known | {selector.name}
    return out


def selects(selectors: Sequence[Selector], target: str) -> bool:
    """Whether a value named C{target} (C{args:q}) is among C{selectors}."""
    collection, colon, name = target.partition(":")
    member = name if colon else None
    chosen = False
    for selector in selectors:
        if selector.covers(collection, member):
            if selector.negated:
                return False
            chosen = True
    return chosen


@attrs.frozen
class Condition:
    """An extra condition of a rule (C{[[rule.and]]})."""

    targets: tuple[Selector, ...]
    transforms: tuple[str, ...]
    operator: str
    argument: Any
    negate: bool = False
    case: bool = False


@attrs.frozen
class Rule:
    """One signature rule (see the module docstring)."""

    id: int
    attack_class: str
    severity: int
    paranoia: int
    targets: tuple[Selector, ...]
    transforms: tuple[str, ...]
    operator: str
    argument: Any
    description: str
    tags: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    case: bool = False
    source: str = ""

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES[self.severity]

    def selects(self, target: str) -> bool:
        return selects(self.targets, target)

    def collections(self) -> dict[str, frozenset[str] | None]:
        """The collections this rule reads: all members (L{None}) or only these names."""
        return collections_of(self.targets)

    def operator_text(self) -> str:
        """The operator and its argument, for listings."""
        argument = self.argument
        if isinstance(argument, (list, tuple)):
            shown = ", ".join(str(a) for a in argument[:6])
            if len(argument) > 6:
                shown += f", ... ({len(argument)} in all)"
            return f"{self.operator} [{shown}]"
        return f"{self.operator} {argument}"


# -- loading -------------------------------------------------------------------------------


def package_rules() -> list[Rule]:
    """The rules shipped in C{veil/waf/rules/}, in file and id order."""
    folder = resources.files("veil.waf").joinpath("rules")
    sources = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".toml")),
                     key=lambda entry: entry.name)
    return load_texts((entry.name, entry.read_text(encoding="utf-8")) for entry in sources)


def load_texts(sources: Iterable[tuple[str, str]]) -> list[Rule]:
    """Rules from (file name, TOML text) pairs; ids must be unique across all of them."""
    rules: list[Rule] = []
    seen: dict[int, str] = {}
    for name, text in sources:
        for rule in load_text(text, name):
            if rule.id in seen:
                raise RuleError(f"{name}: rule {rule.id} is also in {seen[rule.id]}")
            seen[rule.id] = name
            rules.append(rule)
    return rules


def load_text(text: str, source: str = "<rules>") -> list[Rule]:
    """The rules of one TOML rule file; raises L{RuleError} saying what is wrong."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleError(f"{source}: not valid TOML: {e}") from None
    unknown = set(document) - _FILE_KEYS
    if unknown:
        raise RuleError(f"{source}: unknown keys {sorted(unknown)}")
    attack_class = document.get("class")
    if attack_class not in ATTACK_CLASSES:
        raise RuleError(f"{source}: class {attack_class!r} is not one of {ATTACK_CLASSES}")
    defaults = {key: document[key] for key in ("targets", "transforms", "tags") if key in document}
    entries = document.get("rule", [])
    if not isinstance(entries, list):
        raise RuleError(f"{source}: [[rule]] entries expected")
    return [_rule(entry, attack_class, defaults, source) for entry in entries]


def _rule(entry: dict[str, Any], attack_class: str, defaults: dict[str, Any],
          source: str) -> Rule:
    ident = entry.get("id")
    where = f"{source}: rule {ident!r}"
    if not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0:
        raise RuleError(f"{where}: id must be a positive integer")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}")
    severity = entry.get("severity")
    if severity not in SEVERITIES:
        raise RuleError(f"{where}: severity must be one of {list(SEVERITIES)}")
    paranoia = entry.get("paranoia", 1)
    if not isinstance(paranoia, int) or not 1 <= paranoia <= STRICTEST_PARANOIA:
        raise RuleError(f"{where}: paranoia must be 1-{STRICTEST_PARANOIA}")
    operator, argument = _operator(entry, OPERATORS, where)
    targets = _targets(entry.get("targets", defaults.get("targets")), where,
                       required=operator != "anomaly")
    transforms = _transforms(entry.get("transforms", defaults.get("transforms", [])), where)
    if operator != "num" and PER_VALUE_ONLY & set(transforms):
        raise RuleError(f"{where}: transform length only goes with the num operator")
    description = entry.get("description", "")
    if not isinstance(description, str) or not description.strip():
        raise RuleError(f"{where}: a description is required")
    tags = entry.get("tags", [])
    base_tags = defaults.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags + base_tags):
        raise RuleError(f"{where}: tags must be a list of strings")
    conditions = entry.get("and", [])
    if isinstance(conditions, dict):
        conditions = [conditions]
    case = entry.get("case", False)
    if not isinstance(case, bool):
        raise RuleError(f"{where}: case must be true or false")
    return Rule(
        id=ident, attack_class=attack_class, severity=SEVERITIES[severity], paranoia=paranoia,
        targets=targets, transforms=transforms, operator=operator, argument=argument,
        description=" ".join(description.split()),
        tags=tuple(dict.fromkeys([*base_tags, *tags])),
        conditions=tuple(_condition(c, f"{where}: and") for c in conditions),
        case=case, source=source)


def _condition(entry: Any, where: str) -> Condition:
    if not isinstance(entry, dict):
        raise RuleError(f"{where}: a table expected")
    unknown = set(entry) - _CONDITION_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}")
    operator, argument = _operator(entry, CONDITION_OPERATORS, where)
    if operator == "absent" and argument is not True:
        raise RuleError(f"{where}: absent = true is the only form")
    negate = entry.get("not", False)
    case = entry.get("case", False)
    if not isinstance(negate, bool) or not isinstance(case, bool):
        raise RuleError(f"{where}: not and case are true or false")
    return Condition(_targets(entry.get("targets"), where, required=True),
                     _transforms(entry.get("transforms", []), where), operator, argument,
                     negate, case)


def _operator(entry: dict[str, Any], allowed: Sequence[str], where: str) -> tuple[str, Any]:
    found = [key for key in allowed if key in entry]
    if len(found) != 1:
        raise RuleError(f"{where}: exactly one operator of {list(allowed)} is required")
    operator = found[0]
    argument = entry[operator]
    if operator == "rx":
        if not isinstance(argument, str) or not argument:
            raise RuleError(f"{where}: rx must be a non-empty string")
        try:
            re.compile(argument)
        except re.error as e:
            raise RuleError(f"{where}: rx does not compile: {e}") from None
    elif operator in ("pm", "contains", "begins", "ends", "equals"):
        phrases = [argument] if isinstance(argument, str) else argument
        if (not isinstance(phrases, list) or not phrases
                or not all(isinstance(p, str) and p for p in phrases)):
            raise RuleError(f"{where}: {operator} takes a non-empty string or list of them")
        argument = tuple(phrases)
    elif operator == "bytes":
        argument = _byte_ranges(argument, where)
    elif operator == "num":
        if not isinstance(argument, str) or not _NUMERIC.match(argument):
            raise RuleError(f"{where}: num is a comparison such as '> 4096'")
    elif operator == "detect":
        if not isinstance(argument, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", argument):
            raise RuleError(f"{where}: detect names a detector")
    elif operator == "anomaly":
        kinds = [argument] if isinstance(argument, str) else argument
        if not isinstance(kinds, list) or not kinds or not set(kinds) <= set(ANOMALIES):
            raise RuleError(f"{where}: anomaly is one or more of {list(ANOMALIES)}")
        argument = tuple(kinds)
    return operator, argument


def _byte_ranges(text: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(text, str):
        raise RuleError(f"{where}: bytes is a list of ranges such as '0-8,11,14-31'")
    ranges = []
    for item in text.split(","):
        match = _BYTE_RANGE.match(item)
        if match is None:
            raise RuleError(f"{where}: bad byte range {item!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 0 <= low <= high <= 255:
            raise RuleError(f"{where}: bad byte range {item!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _targets(value: Any, where: str, required: bool) -> tuple[Selector, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where}: targets must be a non-empty list of target names")
    try:
        selectors = tuple(parse_selector(v) for v in value)
    except ValueError as e:
        raise RuleError(f"{where}: {e}") from None
    if not any(not s.negated for s in selectors):
        raise RuleError(f"{where}: targets only exclude")
    return selectors


def _transforms(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where}: transforms must be a list of names")
    unknown = [v for v in value if v not in TRANSFORMS]
    if unknown:
        raise RuleError(f"{where}: unknown transforms {unknown} (known: {sorted(TRANSFORMS)})")
    return tuple(value)


def compare(expression: str, value: str) -> bool:
    """Whether C{value}, read as a number, satisfies C{expression} (C{'> 4096'})."""
    match = _NUMERIC.match(expression)
    assert match is not None
    try:
        number = float(value.strip())
    except ValueError:
        return False
    limit = float(match.group(2))
    return {
        "<": number < limit, "<=": number <= limit, ">": number > limit,
        ">=": number >= limit, "==": number == limit, "!=": number != limit,
    }[match.group(1)]
