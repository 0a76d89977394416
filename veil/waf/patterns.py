"""
Rule patterns as the engine compiles them: rewritten so that a pattern
scanning a buffer of many values matches exactly where it would match each
value alone.

A joined buffer is C{SEP v0 SEP v1 SEP ... SEP}: every value is preceded
and followed by the separator L{veil.waf.transforms.SEP} (a separator
inside a value was replaced by L{veil.waf.transforms.SEP_STANDIN}, so a
value never holds one).  L{separated} rewrites a pattern so that

  - C{^} and C{\\A} match the separator before a value, C{\\z} the one
    after it, and C{$} and C{\\Z} the one after it with an optional line
    feed before (hyperscan's C{$} also matches before a final newline);
  - nothing else can match a separator: C{.}, C{\\W}, C{\\S}, C{\\D},
    negated classes and classes whose ranges span the separator lose it.

So a match lies within one value (with its separators as anchors), and
matches there exactly when the pattern matches the value alone.  Patterns
that use something the rewriting does not know are reported as not
separated (L{Separated.exact} false) and the engine confirms their matches
on the value alone.

L{per_value} makes a pattern report once per value at most, at the
separator that ends it, whatever the number of places it matches inside:
detector prefilters such as C{[(;=]} would otherwise call back into Python
for every character of a user agent.

L{CHANGE_FLAGS} are patterns that match a value whenever a transformation
I{could} change it (a superset: C{%} followed by two hex digits for
C{urldecode}, a non-ASCII byte for C{nfkc}, ...).  A value none of a
chain's flags match is left as it is by the whole chain, so the chain's
patterns can be scanned over the value untransformed.
"""

from __future__ import annotations

import re
import string

import attrs

from veil.waf.transforms import B64_MIN, SEP

_SEP_CODE = ord(SEP)
_SEP_ESC = f"\\x{_SEP_CODE:02x}"
#: What C{^} and C{$} become.
START = _SEP_ESC
END = "\\n?" + _SEP_ESC
#: The rest of a value and its end: appended to make a pattern report per value.
_TO_END = f"[^{_SEP_ESC}]*{_SEP_ESC}"

_WORD = frozenset(range(0x30, 0x3A)) | frozenset(range(0x41, 0x5B)) | \
    frozenset(range(0x61, 0x7B)) | {0x5F}
_DIGIT = frozenset(range(0x30, 0x3A))
_SPACE = frozenset({0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20})
_HSPACE = frozenset({0x09, 0x20, 0xA0})
_VSPACE = frozenset({0x0A, 0x0B, 0x0C, 0x0D, 0x85})
_ALL = frozenset(range(256))
_CLASS_ESCAPES = {
    "d": _DIGIT, "D": _ALL - _DIGIT, "w": _WORD, "W": _ALL - _WORD, "s": _SPACE,
    "S": _ALL - _SPACE, "h": _HSPACE, "H": _ALL - _HSPACE, "v": _VSPACE, "V": _ALL - _VSPACE,
}
_POSIX = {
    "alnum": frozenset(b"0123456789" + string.ascii_letters.encode()),
    "alpha": frozenset(string.ascii_letters.encode()),
    "ascii": frozenset(range(128)),
    "blank": frozenset(b" \t"),
    "cntrl": frozenset(range(32)) | {127},
    "digit": _DIGIT,
    "graph": frozenset(range(33, 127)),
    "lower": frozenset(string.ascii_lowercase.encode()),
    "print": frozenset(range(32, 127)),
    "punct": frozenset(string.punctuation.encode()),
    "space": _SPACE,
    "upper": frozenset(string.ascii_uppercase.encode()),
    "word": _WORD,
    "xdigit": frozenset(string.hexdigits.encode()),
}
_CHAR_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "a": 0x07, "e": 0x1B}
#: Escapes outside a class that match one character and never the separator.
_SAFE_ESCAPES = frozenset("dwshvnrtfaebB")
#: Escapes outside a class that can match the separator: replaced by a class without it.
_WIDE_ESCAPES = {"W": "\\w", "S": "\\s", "D": "\\d", "H": "\\h", "V": "\\v", "N": "\\n"}


class Unsupported(ValueError):
    """A construct the rewriting does not know."""


@attrs.frozen
class Separated:
    """A pattern rewritten for joined buffers."""

    expression: str
    #: Whether every match is within one value (else matches are confirmed per value).
    exact: bool
    #: Whether the pattern has an end anchor (and so already ends at the separator).
    anchored_end: bool


def separated(pattern: str) -> Separated:
    """C{pattern} rewritten as the module docstring says."""
    try:
        expression, anchored_end = _rewrite(pattern)
    except Unsupported:
        return Separated(_legacy_anchors(pattern), False, True)
    return Separated(expression, True, anchored_end)


def per_value(expression: str) -> str:
    """C{expression} (as L{separated} makes it, without an end anchor) reporting once per value."""
    return f"(?:{expression}){_TO_END}"


def split_words(expression: str) -> list[str]:
    """
    C{expression} as one or two expressions that together match exactly
    where it matches: a pattern built around one group of alternatives
    (C{\\b(?:benchmark|sysdate|pg_\\w+|...)\\s*\\(}) whose alternatives
    are partly plain words and partly not is split into the pattern with
    the words and the pattern with the rest (a match of C{P(?:X|Y)S} is a
    match of C{P(?:X)S} or of C{P(?:Y)S}).  Hyperscan compiles a long list
    of words mixed with classes into an automaton many times slower than
    the two halves (the list of SQL functions, ten times); any other
    pattern is returned as it is.
    """
    found = _word_group(expression)
    if found is None:
        return [expression]
    start, end, alternatives = found
    words = [a for a in alternatives if _WORD_ALTERNATIVE.fullmatch(a)]
    others = [a for a in alternatives if not _WORD_ALTERNATIVE.fullmatch(a)]
    if len(words) < 2 or not others:
        return [expression]
    head, tail = expression[:start], expression[end:]
    return [f"{head}(?:{'|'.join(group)}){tail}" for group in (words, others)]


_WORD_ALTERNATIVE = re.compile(r"[A-Za-z0-9_]+")


def _word_group(expression: str) -> tuple[int, int, list[str]] | None:
    """
    (start, end, alternatives) of the one top-level C{(?:...|...)} group of
    C{expression} with alternatives, not repeated, when the rest of the
    expression has no alternation; else L{None}.  Expressions with inline
    flags or other C{(?...)} constructs are left alone.
    """
    depth = 0
    group: tuple[int, int, list[str]] | None = None
    opened = 0
    pieces: list[int] = []
    i, n = 0, len(expression)
    while i < n:
        char = expression[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(expression, i)
            continue
        if char == "(":
            if expression.startswith("(?", i) and not expression.startswith("(?:", i):
                return None
            if depth == 0:
                opened, pieces = i, []
            depth += 1
            i += 3 if expression.startswith("(?:", i) else 1
            continue
        if char == ")":
            depth -= 1
            if depth < 0:
                return None
            if depth == 0 and pieces:
                repeated = expression[i + 1:i + 2] in ("*", "+", "?", "{")
                if group is not None or repeated or \
                        not expression.startswith("(?:", opened):
                    return None
                bounds = [opened + 3, *pieces, i]
                group = (opened, i + 1,
                         [expression[bounds[k] + (k > 0):bounds[k + 1]]
                          for k in range(len(bounds) - 1)])
        elif char == "|":
            if depth == 0:
                return None
            if depth == 1:
                pieces.append(i)
        i += 1
    return group if depth == 0 else None


def _class_end(expression: str, start: int) -> int:
    """The index after the character class that starts at C{start}."""
    i = start + 1
    if expression[i:i + 1] == "^":
        i += 1
    if expression[i:i + 1] == "]":
        i += 1
    while i < len(expression):
        if expression[i] == "\\":
            i += 2
            continue
        if expression[i] == "]":
            return i + 1
        i += 1
    return i


def literal(text: str) -> str:
    """C{text} as an expression matching its UTF-8 bytes literally."""
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"\\x{b:02x}"
                   for b in text.encode("utf-8"))


def byte_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """A class of the bytes in C{ranges}, without the separator."""
    members = set()
    for low, high in ranges:
        members.update(range(low, high + 1))
    members.discard(_SEP_CODE)
    return _emit_set(members, negated=False)


def _rewrite(pattern: str) -> tuple[str, bool]:
    out: list[str] = []
    anchored_end = False
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise Unsupported("a trailing backslash")
            escape = pattern[i + 1]
            i += 2
            if escape == "A":
                out.append(START)
            elif escape == "z":
                out.append(_SEP_ESC)
                anchored_end = True
            elif escape == "Z":
                out.append(END)
                anchored_end = True
            elif escape in _WIDE_ESCAPES:
                out.append(f"[^{_WIDE_ESCAPES[escape]}{_SEP_ESC}]")
            elif escape in _SAFE_ESCAPES:
                out.append("\\" + escape)
            elif escape == "x":
                code, i = _hex_escape(pattern, i)
                if code == _SEP_CODE:
                    raise Unsupported("the separator itself")
                out.append(f"\\x{code:02x}")
            elif escape.isalnum():
                raise Unsupported(f"\\{escape}")
            else:
                out.append("\\" + escape)
            continue
        if char == "[":
            start = i
            members, negated, items, i = _parse_class(pattern, i)
            if negated:
                # The same members, and the separator, excluded (kept as
                # written: case-insensitivity applies to them as before).
                out.append("[^" + "".join(items) + _SEP_ESC + "]")
            elif _SEP_CODE in members:
                out.append(_emit_set(members - {_SEP_CODE}, negated=False))
            else:
                out.append(pattern[start:i])
            continue
        if char == "(" and pattern.startswith("(?", i):
            # Only plain groups and inline flags that do not change the syntax.
            j = i + 2
            if j < n and pattern[j] == ":":
                out.append("(?:")
                i = j + 1
                continue
            k = j
            while k < n and pattern[k] in "ims-":
                k += 1
            if k < n and pattern[k] in ":)" and k > j:
                out.append(pattern[i:k + 1])
                i = k + 1
                continue
            raise Unsupported(pattern[i:i + 4])
        if char == "^":
            out.append(START)
        elif char == "$":
            out.append(END)
            anchored_end = True
        elif char == ".":
            out.append(f"[^{_SEP_ESC}]")
        elif char == SEP:
            raise Unsupported("the separator itself")
        else:
            out.append(char)
        i += 1
    return "".join(out), anchored_end


def _hex_escape(pattern: str, i: int) -> tuple[int, int]:
    if pattern.startswith("{", i):
        close = pattern.find("}", i)
        if close < 0:
            raise Unsupported("\\x{")
        code = int(pattern[i + 1:close], 16)
        i = close + 1
    else:
        digits = pattern[i:i + 2]
        if len(digits) != 2 or not all(c in string.hexdigits for c in digits):
            raise Unsupported("\\x")
        code = int(digits, 16)
        i += 2
    if code > 0xFF:
        raise Unsupported("a character above 0xff")
    return code, i


def _parse_class(pattern: str, i: int) -> tuple[frozenset[int], bool, list[str], int]:
    """
    The bytes of the class starting at C{pattern[i]} (C{[}), whether it is
    negated, its members as written, and where it ends.
    """
    i += 1
    n = len(pattern)
    negated = pattern.startswith("^", i)
    if negated:
        i += 1
    members: set[int] = set()
    items: list[str] = []
    first = True
    while True:
        if i >= n:
            raise Unsupported("an unterminated class")
        char = pattern[i]
        if char == "]" and not first:
            return frozenset(members), negated, items, i + 1
        first = False
        begin = i
        if pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            if close < 0:
                raise Unsupported("[:")
            name = pattern[i + 2:close]
            inverted = name.startswith("^")
            name = name.lstrip("^")
            if name not in _POSIX:
                raise Unsupported(f"[:{name}:]")
            members |= (_ALL - _POSIX[name]) if inverted else _POSIX[name]
            i = close + 2
            items.append(pattern[begin:i])
            continue
        low, i, is_set = _class_item(pattern, i)
        if is_set is not None:
            members |= is_set
        elif pattern.startswith("-", i) and i + 1 < n and pattern[i + 1] != "]":
            high, i, high_set = _class_item(pattern, i + 1)
            if high_set is not None or high < low:
                raise Unsupported("a class range")
            members.update(range(low, high + 1))
        else:
            members.add(low)
        item = pattern[begin:i]
        # A literal - stays one when the separator is put after it.
        items.append("\\-" if item == "-" else item)


def _class_item(pattern: str, i: int) -> tuple[int, int, frozenset[int] | None]:
    """One member of a class: (byte, next index, None) or (0, next index, the set of a \\d-like escape)."""
    char = pattern[i]
    if char != "\\":
        code = ord(char)
        if code > 0xFF:
            raise Unsupported("a character above 0xff")
        return code, i + 1, None
    if i + 1 >= len(pattern):
        raise Unsupported("a trailing backslash")
    escape = pattern[i + 1]
    if escape in _CLASS_ESCAPES:
        return 0, i + 2, _CLASS_ESCAPES[escape]
    if escape in _CHAR_ESCAPES:
        return _CHAR_ESCAPES[escape], i + 2, None
    if escape == "x":
        code, j = _hex_escape(pattern, i + 2)
        return code, j, None
    if escape.isalnum():
        raise Unsupported(f"\\{escape} in a class")
    return ord(escape), i + 2, None


def _emit_set(members: set[int] | frozenset[int], negated: bool) -> str:
    """A class of exactly these bytes (or all but these)."""
    if not members:
        return "[^\\x00-\\xff]" if not negated else "[\\x00-\\xff]"
    runs: list[tuple[int, int]] = []
    for code in sorted(members):
        if runs and runs[-1][1] == code - 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    body = "".join(f"\\x{low:02x}" if low == high else f"\\x{low:02x}-\\x{high:02x}"
                   for low, high in runs)
    return f"[^{body}]" if negated else f"[{body}]"


def _legacy_anchors(pattern: str) -> str:
    """Anchors only (for a pattern L{_rewrite} does not know): its matches are confirmed per value."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escape = pattern[i:i + 2]
            if not in_class and escape == "\\A":
                out.append(START)
            elif not in_class and escape in ("\\z", "\\Z"):
                out.append(END)
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
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        out.append(START if char == "^" else END if char == "$" else char)
        i += 1
    return "".join(out)


# -- what a transformation could change -----------------------------------------------------

_B64 = "A-Za-z0-9+/_\\-"
_B64_NONLETTER = "0-9+/_\\-"


def _window(length: int, first: str, second: str, between: str) -> list[str]:
    """
    Expressions for a window of C{length} Base64 characters whose first
    letter is in class C{first} and which holds a letter of class
    C{second} after it (C{between}: what may come between them): one
    alternative per place of the two letters.
    """
    alternatives = []
    for before in range(length):
        for gap in range(length - before - 1):
            after = length - before - gap - 2
            alternatives.append(_repeat(_B64_NONLETTER, before) + f"[{first}]"
                                + _repeat(between, gap) + f"[{second}]" + _repeat(_B64, after))
    return alternatives


def _repeat(members: str, count: int) -> str:
    """A class of C{members} repeated C{count} times (nothing for none)."""
    return "" if count == 0 else f"[{members}]" if count == 1 else f"[{members}]{{{count}}}"


def _base64_flags() -> tuple[tuple[str, int], ...]:
    """
    What a run L{veil.waf.transforms.base64} may decode looks like: it
    decodes only runs of at least C{B64_MIN} Base64 characters that have
    letters of both cases, or no letter and not only digits (a run of
    digits followed by C{=} padding counts).  A run of one case (words,
    slugs, hex digests, UUIDs, upper-case codes, ISO dates) or of digits
    alone is left alone, and a flag that matched those would send every
    such value to Python to learn nothing.

    A run with both cases has two letters of different cases with no
    letter between them; if they are less than C{B64_MIN} apart, some
    window of C{B64_MIN} characters of the run holds both, else they are
    the ends of a stretch of C{B64_MIN - 1} or more characters without a
    letter.
    """
    lower, upper = "a-z", "A-Z"
    mixed = (_window(B64_MIN, lower, upper, lower + _B64_NONLETTER)
             + _window(B64_MIN, upper, lower, upper + _B64_NONLETTER)
             + [f"[{lower}][{_B64_NONLETTER}]{{{B64_MIN - 1},}}[{upper}]",
                f"[{upper}][{_B64_NONLETTER}]{{{B64_MIN - 1},}}[{lower}]"])
    letterless = [_repeat("0-9", k) + "[+/_\\-]" + _repeat(_B64_NONLETTER, B64_MIN - 1 - k)
                  for k in range(B64_MIN)] + [f"[0-9]{{{B64_MIN}}}="]
    return (("|".join(mixed), 0), ("|".join(letterless), 0))


#: For each transformation with a cheap test, patterns (case-sensitive, in
#: the joined-buffer form) at least one of which matches every value the
#: transformation changes, with a minimum match length where one is needed.
#: A transformation without an entry changes values too often to be worth
#: testing (C{lowercase}, C{length}): its chain is always applied.
CHANGE_FLAGS: dict[str, tuple[tuple[str, int], ...]] = {
    # %XX and %uXXXX (the only escapes percent_decode decodes).
    "urldecode": (("%(?:[0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})", 0),),
    # \u, \x, \ and punctuation, \n \r \0 (see transforms._JS_ESCAPE).
    "jsdecode": (("\\\\(?:[uUxXnr0]|[^0-9A-Za-z_\\s\\x1e])", 0),),
    # A numeric reference, a named one with its ;, or one of the few
    # browsers decode without it.
    "htmldecode": (("&(?:#|[A-Za-z][A-Za-z0-9]{1,31};|lt|gt|amp|quot|nbsp|LT|GT|AMP|QUOT)", 0),),
    # A run of 12 or more Base64 characters with both cases or without
    # letters (user agents and tokens have them: the transformation itself,
    # run on the value, tells; see CONFIRMED).
    "base64": _base64_flags(),
    # Anything not ASCII (NFKC and invisible characters).
    "nfkc": (("[\\x80-\\xff]", 0),),
    "removenulls": (("\\x00", 0),),
    # Quotes, carets, backslashes, $ parameters, brace lists.
    "shellquotes": (("['\"^\\\\]|\\$[@*#?!$_\\-0-9{I\\x80-\\xff]|\\{[^{}\\s,\\x1e]+,", 0),),
    "sqlcomments": (("/\\*|\\*/|--|#", 0),),
    "htmlcomments": (("<!--", 0),),
    "slashes": (("\\\\", 0),),
    # Whitespace other than a lone space.
    "compress": (("[\\t\\n\\x0b\\x0c\\r]|\\xc2\\xa0|  ", 0),),
}

#: Transformations whose flag matches too many values that they leave
#: alone (paths, user agents, IDs and tokens have long Base64-like runs):
#: the flag is confirmed by asking the transformation whether it changes
#: the value (L{veil.waf.transforms.CHANGES}), which is exact when no
#: transformation before it in the chain changes the value (and when one
#: does, that one's flag makes the chain dirty anyway).
CONFIRMED = frozenset({"base64"})
