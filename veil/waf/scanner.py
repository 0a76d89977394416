"""
How the values of a request are matched against the pattern rules: one
hyperscan database per I{family} of rules (the rules that read the same
collections, whatever their transformation chains), one scan for all the
values of a request, and a memo of what each value matched.

The semantics are simple (L{Family.reference} implements them literally):
a rule's pattern matches a value when it matches the value transformed by
the rule's chain, alone.  The fast path (L{Family.entries}) gets the same
matches with one scan in the common case:

 1. The values are joined (L{veil.waf.patterns}: C{SEP v0 SEP v1 ... SEP})
    and scanned, untransformed, once by a database holding the patterns of
    every chain of the family and once by a small database of the I{change
    flags} (L{veil.waf.patterns.CHANGE_FLAGS}): patterns that match a value
    whenever a transformation could change it.  A value that neither
    matches costs nothing more.
 2. A value no flag of a chain matched is left as it is by the chain, so
    what that chain's patterns matched in step 1 is what they match in the
    transformed value.  The other values are transformed in Python, chain
    by chain (chains share their common prefixes); those the chain really
    changes lose that chain's matches from step 1 and are scanned again,
    transformed, all in one second scan whose matches count only for the
    chain each piece was transformed by.

Patterns are rewritten so that a match never spans two values and reports
once per value (L{veil.waf.patterns.separated}, L{per_value}), so a match is
attributed to the value whose separator it ends at.

What a value matched (its I{entry}) depends on nothing but the value, so
entries are remembered across requests (L{Family.cache}, bounded): the
header values of browsers, cookie names and JSON keys come back all the
time and are looked up rather than scanned.  Per paranoia level, a family
keeps the set of values it has placed (L{Family.filled}) and, per
collection, the values that have a hit there at that level
(L{Family.hot}): a request costs one set difference for its new values and
one intersection per collection for those that matched, whatever the
number of values.  A detector runs on the transformed value only when a
request needs its answer (a rule at the request's paranoia level, on a
target it reads), and its answer is remembered with the entry; a value
whose detectors all said no is no longer hot there.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import hyperscan

from veil.waf.rules import Rule
from veil.waf.transforms import SEP, SEP_STANDIN, TRANSFORMS

#: A scan stops collecting after this many pattern matches (a request
#: with that many is an attack whatever the rest holds).
MAX_HITS = 4096
#: Values up to this many characters are remembered; longer ones are
#: matched each time they come.
CACHE_VALUE_CHARS = 512
#: Entries remembered per family; when full, the memo starts again.
CACHE_ENTRIES = 8192

DIRECT, CONFIRM, DETECT = 0, 1, 2
_SEP_BYTE = SEP.encode()
_UNSET = object()
#: The entry of a value that matched nothing.
NOTHING: tuple = ()


class Action:
    """What a pattern stands for: a rule, how its match is decided, and its chain."""

    __slots__ = ("chain", "check", "collections", "kind", "order", "rule", "rules_out",
                 "selected")

    def __init__(self, rule: Rule, kind: int, check: Any = None, chain: int = 0,
                 order: int = 0, rules_out: Callable[[str], bool] | None = None) -> None:
        self.rule = rule
        self.kind = kind
        #: The detector (C{DETECT}) or the compiled C{re} pattern (C{CONFIRM}).
        self.check = check
        #: For a detector: its cheap test of values it never flags, if it has one.
        self.rules_out = rules_out
        #: The index of the rule's chain in its family.
        self.chain = chain
        #: The rule's position among the family's rules: matches keep this order.
        self.order = order
        #: target -> whether the rule reads it (remembered, bounded).
        self.selected: dict[str, bool] = {}
        #: The collections the rule reads (some or all of their members).
        self.collections = frozenset(rule.collections())

    def selects(self, target: str) -> bool:
        known = self.selected.get(target)
        if known is None:
            if len(self.selected) >= 1024:
                self.selected.clear()
            known = self.selected[target] = self.rule.selects(target)
        return known


class Hit:
    """One action that matched a value, the transformed value it matched, and a detector's answer."""

    __slots__ = ("action", "detail", "text")

    def __init__(self, action: Action, text: str) -> None:
        self.action = action
        self.text = text
        self.detail: Any = _UNSET

    def detected(self) -> str | None:
        """The detector's reason for this value (computed once), or L{None}."""
        detail = self.detail
        if detail is _UNSET:
            reason = self.action.check(self.text)
            detail = self.detail = str(reason)[:64] if reason else None
        return detail


def _collect(ident: int, start: int, end: int, flags: int, hits: list[tuple[int, int]]) -> bool:
    hits.append((ident, end))
    return len(hits) >= MAX_HITS


def scan(db: Any, data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """(pattern id, end offset) of every match in C{data}, and whether it stopped at L{MAX_HITS}."""
    hits: list[tuple[int, int]] = []
    try:
        db.scan(data, _collect, 0, hits)
    except hyperscan.ScanTerminated:
        return hits, True
    return hits, False


def joined(texts: Sequence[str]) -> tuple[bytes, bool]:
    """C{texts} as a joined buffer (C{SEP t0 SEP t1 ... SEP}), and whether it is ASCII."""
    text = SEP.join(texts)
    if text.count(SEP) != len(texts) - 1:
        text = SEP.join(t.replace(SEP, SEP_STANDIN) for t in texts)
    data = (SEP + text + SEP).encode("utf-8", "surrogatepass")
    return data, len(data) == len(text) + 2


def locate(data: bytes, texts: Sequence[str], ascii_only: bool,
           hits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(index of the text, pattern id) of each hit of a scan of C{joined(texts)}."""
    if len(hits) <= 4:
        return [(data.count(_SEP_BYTE, 0, end - 1) - 1, ident) for ident, end in hits]
    lengths = map(len, texts) if ascii_only else \
        (len(t.encode("utf-8", "surrogatepass")) for t in texts)
    starts = list(accumulate(map((1).__add__, lengths), initial=1))
    return [(bisect_right(starts, end - 1) - 1, ident) for ident, end in hits]


class Family:
    """
    The rules that read one set of collections: their chains, their
    databases (every pattern of every chain; the change flags) and the
    memo of value entries.
    """

    def __init__(self, spec: Any, chains: Sequence[tuple[str, ...]], db: Any,
                 actions: Sequence[tuple[Action, ...]], flag_db: Any, masks: Sequence[int],
                 always_dirty: int, confirms: Sequence[Callable[[str], bool] | None]) -> None:
        self.spec = spec
        self.chains = tuple(chains)
        #: The patterns of the rules (ids index L{actions}).
        self.db = db
        #: Per pattern id: the actions it stands for.
        self.actions = tuple(actions)
        #: The change flags (ids index L{masks} and L{confirms}), or L{None}.
        self.flag_db = flag_db
        #: Per flag id: the chains it makes dirty.
        self.masks = tuple(masks)
        #: The chains that are never skipped (a transformation without a flag).
        self.always_dirty = always_dirty
        #: Every chain, as a mask.
        self.every_chain = (1 << len(self.chains)) - 1
        #: Per flag id: for a flag that is confirmed, whether the value
        #: really changes (L{veil.waf.patterns.CONFIRMED}).
        self.confirms = tuple(confirms)
        #: value -> what it matched (every hit, at every level).
        self.cache: dict[str, tuple[Hit, ...]] = {}
        #: paranoia level -> the values placed in the hot sets of that level.
        self.filled: dict[int, set[str]] = {}
        #: (paranoia level, collection) -> the values with a hit that a
        #: request at that level may report for a value of that collection.
        self.hot: dict[tuple[int, str], set[str]] = {}
        #: paranoia level -> the values hot in some collection at that level.
        self.warm: dict[int, set[str]] = {}
        #: The transformations of each chain, looked up once.
        self._functions = tuple(tuple(TRANSFORMS[name] for name in chain) for chain in chains)

    # -- the fast path -------------------------------------------------------------------

    def forget(self) -> None:
        """Empty the memo (the sets stay the same objects: the engine's plan holds them)."""
        self.cache.clear()
        for placed in self.filled.values():
            placed.clear()
        for hot in self.hot.values():
            hot.clear()
        for warm in self.warm.values():
            warm.clear()

    def placed(self, level: int) -> set[str]:
        """The values placed at paranoia C{level} (see L{learn})."""
        found = self.filled.get(level)
        if found is None:
            found = self.filled[level] = set()
        return found

    def warm_at(self, level: int) -> set[str]:
        """The values hot in some collection at paranoia C{level}."""
        found = self.warm.get(level)
        if found is None:
            found = self.warm[level] = set()
        return found

    def hot_at(self, level: int, collection: str) -> set[str]:
        """The values that may match for a request at C{level} in C{collection}."""
        key = (level, collection)
        found = self.hot.get(key)
        if found is None:
            found = self.hot[key] = set()
        return found

    def learn(self, level: int, everything: set[str], absent: set[str]) -> list[str] | None:
        """
        Place the values of C{absent} (those of C{everything}, a request's
        values, not yet placed at C{level}): their entries from the memo or
        computed (all missing ones scanned together), and the values with
        a hit at C{level} in the hot sets of the collections those hits'
        rules read.  Returns the values to take out again once the request
        has its answers (too long to remember, or from a scan cut short).

        The work done for every value is done by set operations, C{zip}
        and C{filter}; Python loops run over the values that matched.
        """
        cache = self.cache
        missing = absent.difference(cache)
        transient = None
        if missing:
            if len(cache) + len(missing) > CACHE_ENTRIES:
                self.forget()
                absent = missing = everything
            order = list(missing)
            computed, complete = self.compute(order)
            cache.update(zip(order, computed, strict=True))
            if not complete:
                transient = order
            elif max(map(len, order)) > CACHE_VALUE_CHARS:
                transient = [value for value in order if len(value) > CACHE_VALUE_CHARS] or None
        self.placed(level).update(absent)
        hot = self.hot
        warm = self.warm_at(level)
        for value in filter(cache.__getitem__, absent):
            reads: set[str] = set()
            for hit in cache[value]:
                action = hit.action
                if action.rule.paranoia <= level:
                    reads.update(action.collections)
            for collection in reads:
                found = hot.get((level, collection))
                if found is not None:
                    found.add(value)
                    warm.add(value)
        return transient

    def drop(self, level: int, values: list[str]) -> None:
        """Take C{values} out of the memo again (see L{learn})."""
        placed = self.placed(level)
        hots = [hot for (at, _), hot in self.hot.items() if at == level]
        hots.append(self.warm_at(level))
        for value in values:
            self.cache.pop(value, None)
            placed.discard(value)
            for hot in hots:
                hot.discard(value)

    def compute(self, values: list[str]) -> tuple[list[tuple[Hit, ...]], bool]:
        """The entries of C{values}, and whether they are complete (no scan stopped at L{MAX_HITS})."""
        data, ascii_only = joined(values)
        hits, stopped = scan(self.db, data)
        count = len(values)
        always_dirty = self.always_dirty
        dirty = dict.fromkeys(range(count), always_dirty) if always_dirty else {}
        flags: list[tuple[int, int]] = []
        if self.flag_db is not None:
            flags, flags_stopped = scan(self.flag_db, data)
            if flags_stopped:
                # The values after the last one flagged may be changed too.
                last = max(index for index, _ in locate(data, values, ascii_only, flags))
                dirty.update(dict.fromkeys(range(last, count), self.every_chain))
        if not hits and not flags and not dirty:
            return [NOTHING] * count, True
        if flags:
            masks, confirms = self.masks, self.confirms
            for index, ident in locate(data, values, ascii_only, flags):
                if index < 0 or index >= count:
                    continue  # pragma: no cover - only a pattern matching a bare separator
                mask = masks[ident]
                known = dirty.get(index, 0)
                if not mask & ~known:
                    continue
                confirm = confirms[ident]
                if confirm is not None and not confirm(values[index].replace(SEP, SEP_STANDIN)):
                    continue
                dirty[index] = known | mask
        matched: dict[int, list[Action]] = {}
        table = self.actions
        for index, ident in locate(data, values, ascii_only, hits):
            if index < 0 or index >= count:
                continue  # pragma: no cover - only a pattern matching a bare separator
            found = matched.get(index)
            if found is None:
                matched[index] = list(table[ident])
            else:
                found.extend(table[ident])
        texts: dict[int, dict[int, str]] = {}
        pieces: list[tuple[int, int, str]] = []
        for index, mask in dirty.items():
            if mask:
                changed = texts[index] = self._transform(values[index], mask, {})
                pieces.extend((index, chain, text) for chain, text in changed.items())
        if pieces and self._rescan(pieces, matched):
            stopped = True
        entries: list[tuple[Hit, ...]] = [NOTHING] * count
        for index, actions in matched.items():
            if actions:
                entries[index] = self._entry(values[index], actions, texts.get(index))
        return entries, not stopped

    def _transform(self, value: str, mask: int, out: dict[int, str]) -> dict[int, str]:
        """The texts of C{value} under the chains of C{mask} that change it (into C{out}, by chain)."""
        if SEP in value:
            value = value.replace(SEP, SEP_STANDIN)
        done: dict[tuple[str, ...], str] = {(): value}
        for chain_index, chain in enumerate(self.chains):
            if not mask >> chain_index & 1:
                continue
            length = len(chain)
            while chain[:length] not in done:
                length -= 1
            text = done[chain[:length]]
            functions = self._functions[chain_index]
            for step in range(length, len(chain)):
                text = functions[step](text)
                if SEP in text:
                    text = text.replace(SEP, SEP_STANDIN)
                done[chain[:step + 1]] = text
            if text != value:
                out[chain_index] = text
        return out

    def _rescan(self, pieces: list[tuple[int, int, str]],
                matched: dict[int, list[Action]]) -> bool:
        """
        Scan the transformed texts: each piece's matches count for its
        chain only, and replace what that chain matched untransformed.  A
        value that several chains turn into the same text (a percent-encoded
        value that has no quotes nor comments) is scanned once for all of
        them.  Returns whether the scan stopped at L{MAX_HITS}.
        """
        slots: dict[tuple[int, str], int] = {}
        for index, chain, text in pieces:
            found = matched.get(index)
            if found:
                matched[index] = [a for a in found if a.chain != chain]
            key = (index, text)
            slots[key] = slots.get(key, 0) | 1 << chain
        keys = list(slots)
        strings = [text for _, text in keys]
        data, ascii_only = joined(strings)
        hits, stopped = scan(self.db, data)
        table = self.actions
        for piece, ident in locate(data, strings, ascii_only, hits):
            if piece < 0 or piece >= len(keys):
                continue  # pragma: no cover - only a pattern matching a bare separator
            key = keys[piece]
            chains = slots[key]
            own = [a for a in table[ident] if chains >> a.chain & 1]
            if own:
                index = key[0]
                found = matched.get(index)
                if found is None:
                    matched[index] = own
                else:
                    found.extend(own)
        return stopped

    def _entry(self, value: str, actions: list[Action], texts: dict[int, str] | None) -> \
            tuple[Hit, ...]:
        hits = []
        seen: set[int] = set()
        if SEP in value:
            value = value.replace(SEP, SEP_STANDIN)
        for action in sorted(actions, key=_order):
            if id(action) in seen:
                continue
            seen.add(id(action))
            text = texts.get(action.chain, value) if texts else value
            if action.kind == CONFIRM and not action.check.search(text):
                continue
            if action.rules_out is not None and action.rules_out(text):
                continue
            hits.append(Hit(action, text))
        return tuple(hits)

    # -- the reference ---------------------------------------------------------------------

    def reference(self, value: str) -> tuple[Hit, ...]:
        """
        The entry of C{value} computed the slow, literal way: each chain
        applied to the value, the database scanned over each result alone,
        and only that chain's patterns counted.  No flags, no memo.
        """
        matched: list[Action] = []
        texts: dict[int, str] = {}
        self._transform(value, (1 << len(self.chains)) - 1, texts)
        plain = value.replace(SEP, SEP_STANDIN)
        for chain in range(len(self.chains)):
            text = texts.get(chain, plain)
            data, _ = joined([text])
            hits, _ = scan(self.db, data)
            for ident, _ in hits:
                matched.extend(a for a in self.actions[ident] if a.chain == chain)
        if not matched:
            return NOTHING
        return self._entry(value, matched, texts)


def seen_at(entry: tuple[Hit, ...], level: int, collection: str) -> tuple[Hit, ...]:
    """
    The hits of C{entry} that count at paranoia C{level} for a value of
    C{collection}: rules at that level or below that read the collection,
    and for detectors, only when the detector flags the value (it runs
    here, once per value and level).
    """
    if not entry:
        return NOTHING
    return tuple(h for h in entry
                 if h.action.rule.paranoia <= level and collection in h.action.collections
                 and (h.action.kind != DETECT or h.detected() is not None)) or NOTHING


def _order(action: Action) -> int:
    return action.order


def compile_confirmation(rule: Rule) -> Callable[[str], Any]:
    """The C{re} that confirms a rule's matches when hyperscan only prefilters them."""
    return re.compile(rule.argument, re.DOTALL | (0 if rule.case else re.IGNORECASE))
