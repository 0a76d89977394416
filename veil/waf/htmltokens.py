"""
The HTML tokenizer of Veil's XSS detector (L{veil.waf.xss}).

It follows the tokenizer states of the HTML5 specification that decide
where a browser sees tags and attributes -- data, tag open, tag name,
before/after attribute name, attribute value (double-quoted, single-quoted,
unquoted), after attribute value, self-closing start tag, markup
declaration, comment and bogus comment -- and yields what the tree builder
would get:

    ("tag", name, attrs, end, after, at)
                                 a start or end tag; C{name} in lower case
                                 (ASCII only, as browsers do), C{attrs} a
                                 list of C{(name, value)} with C{value}
                                 C{None} when the attribute has no C{=},
                                 C{after} the position after its C{>}, C{at}
                                 the position of its name
    ("comment", body, start, bogus)
                                 <!-- body -->, or (C{bogus}) <!body> and
                                 </ body>; C{start} is where C{body} begins
    ("pi", body)                 <?body> (a bogus comment to browsers; XML
                                 processing instructions are attacks' tools)

It differs from a browser where detection is better served:

  - a tag that the text leaves open at its end is still yielded: the page
    around an injected value usually closes it;
  - the content of C{<script>}, C{<style>}, C{<textarea>} and the other
    raw-text elements is read as markup too (a browser would not; those
    elements are judged on their own);
  - attribute values are returned raw; the detector decodes character
    references itself;
  - a value may also be quoted with backticks, C{\v} separates attributes
    and NULs just after C{<} are skipped, as old Internet Explorer did.

L{tokens} can also start inside an attribute value of a tag that the text
does not show (the value of C{<a title="VALUE">}), which is where injected
attributes begin after the value's quote.

Nothing here raises on any input, and the work is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

#: Start states for L{tokens}.
DATA = "data"
UNQUOTED = "unquoted"   # inside an unquoted attribute value
SQUOTED = "squoted"     # inside a single-quoted attribute value
DQUOTED = "dquoted"     # inside a double-quoted attribute value

# HTML's whitespace, and \v, which old Internet Explorer took for it too.
_TAG_NAME = re.compile(r"[^\t\n\v\f\r />]*")
_ATTR_NAME = re.compile(r"[^\t\n\v\f\r />=]*")
_UNQUOTED_VALUE = re.compile(r"[^\t\n\v\f\r >]*")
_SKIP_WS = re.compile(r"[\t\n\v\f\r ]*")
_SKIP_WS_SLASH = re.compile(r"[\t\n\v\f\r /]*")
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(text: str) -> str:
    """ASCII lower case, as HTML folds tag and attribute names (the same
    length as C{text}: other letters are left alone)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_UPPER)


def tokens(text: str, state: str = DATA, limit: int | None = None,
           start: int = 0) -> Iterator[tuple]:
    """
    Yield the tags, comments and processing instructions of
    C{text[start:limit]}, starting in C{state}.  From an attribute-value state
    the first token is a tag named C{""} that holds the attributes that
    follow the value; for L{SQUOTED} and L{DQUOTED} nothing is yielded
    unless the text closes the value with its quote.
    """
    end = len(text) if limit is None or limit > len(text) else limit
    pos = start
    if state != DATA:
        if state == UNQUOTED:
            m = _UNQUOTED_VALUE.match(text, pos, end)
            pos = m.end()
            if pos >= end:
                return
            if text[pos] == ">":
                pos += 1
            else:
                at = pos
                attrs, pos = _attributes(text, pos, end)
                yield ("tag", "", attrs, False, pos, at)
        else:
            quote = "'" if state == SQUOTED else '"'
            i = text.find(quote, pos, end)
            if i < 0:
                return
            attrs, pos = _attributes(text, i + 1, end)
            yield ("tag", "", attrs, False, pos, i + 1)
    find = text.find
    while pos < end:
        lt = find("<", pos, end)
        if lt < 0 or lt + 1 >= end:
            return
        c = text[lt + 1]
        skip = 0
        while c == "\x00" and lt + skip + 2 < end:
            # <\0img: NULs that old browsers and some filters drop.
            skip += 1
            c = text[lt + 1 + skip]
        if "a" <= c <= "z" or "A" <= c <= "Z":
            m = _TAG_NAME.match(text, lt + 1 + skip, end)
            name = lower(m.group())
            attrs, pos = _attributes(text, m.end(), end)
            yield ("tag", name, attrs, False, pos, m.start())
        elif c == "/":
            c2 = text[lt + 2:lt + 3]
            if ("a" <= c2 <= "z" or "A" <= c2 <= "Z") and lt + 2 < end:
                m = _TAG_NAME.match(text, lt + 2, end)
                attrs, pos = _attributes(text, m.end(), end)
                yield ("tag", lower(m.group()), attrs, True, pos, m.start())
            elif c2 == ">":
                pos = lt + 3
            else:
                gt = find(">", lt + 2, end)
                pos = end if gt < 0 else gt + 1
                yield ("comment", text[lt + 2:pos - 1 if gt >= 0 else end], lt + 2, True)
        elif c == "!":
            if text.startswith("!--", lt + 1):
                body_start = lt + 4
                if text.startswith(">", body_start) or text.startswith("->", body_start):
                    # <!--> and <!---> are empty comments.
                    pos = text.find(">", body_start, end) + 1
                    yield ("comment", "", body_start, False)
                    continue
                close = _comment_end(text, body_start, end)
                if close is None:
                    yield ("comment", text[body_start:end], body_start, False)
                    return
                yield ("comment", text[body_start:close[0]], body_start, False)
                pos = close[1]
            else:
                gt = find(">", lt + 2, end)
                pos = end if gt < 0 else gt + 1
                yield ("comment", text[lt + 2:pos - 1 if gt >= 0 else end], lt + 2, True)
        elif c == "?":
            gt = find(">", lt + 2, end)
            pos = end if gt < 0 else gt + 1
            yield ("pi", text[lt + 2:pos - 1 if gt >= 0 else end])
        else:
            pos = lt + 1


def _comment_end(text: str, pos: int, end: int) -> tuple[int, int] | None:
    """(start, after) of the C{-->} or C{--!>} that ends a comment, or None."""
    i = text.find("--", pos, end)
    while i >= 0:
        j = i + 2
        while j < end and text[j] == "-":
            j += 1
        if text.startswith(">", j):
            return (i, j + 1)
        if text.startswith("!>", j):
            return (i, j + 2)
        i = text.find("--", j, end)
    return None


def _attributes(text: str, pos: int, end: int) -> tuple[list, int]:
    """
    The attributes of a tag from C{pos} (just after its name, or after an
    attribute value) up to its C{>}, and the position after it.
    """
    attrs = []
    while True:
        pos = _SKIP_WS_SLASH.match(text, pos, end).end()
        if pos >= end:
            return attrs, end
        if text[pos] == ">":
            return attrs, pos + 1
        # Attribute name: a leading '=' belongs to the name.
        start = pos
        if text[pos] == "=":
            pos += 1
        pos = _ATTR_NAME.match(text, pos, end).end()
        name = lower(text[start:pos])
        pos = _SKIP_WS.match(text, pos, end).end()
        if pos >= end or text[pos] != "=":
            attrs.append((name, None))
            continue
        pos = _SKIP_WS.match(text, pos + 1, end).end()
        if pos >= end:
            attrs.append((name, ""))
            return attrs, end
        q = text[pos]
        if q == '"' or q == "'" or q == "`":  # ` quotes values in old IE
            close = text.find(q, pos + 1, end)
            if close < 0:
                attrs.append((name, text[pos + 1:end]))
                return attrs, end
            attrs.append((name, text[pos + 1:close]))
            pos = close + 1
        elif q == ">":
            attrs.append((name, ""))
            return attrs, pos + 1
        else:
            m = _UNQUOTED_VALUE.match(text, pos, end)
            attrs.append((name, m.group()))
            pos = m.end()
