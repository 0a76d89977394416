"""
JavaScript reading for Veil's XSS detector (L{veil.waf.xss}).

A value reflected into a script -- a string literal in C{<script>}, an
event handler, a C{javascript:} URL -- is an attack when, from the point
where it leaves its string, it is JavaScript that calls something a page
never needs from user input: C{alert}, C{eval}, C{Function}, C{fetch},
C{document.write}, a C{constructor}, an assignment to C{location}.

L{scan} reads a text as JavaScript from a start point, with a lenient
expression grammar (operands and operators alternate, brackets nest,
statements end at C{;}, newlines or braces), and reports the first sink it
sees while the text is still JavaScript.  Natural language stops being
JavaScript at its second word ("Please confirm (by email)" fails at
C{confirm}), so it reports nothing.

The grammar is deliberately small: no statement forms beyond what injected
code uses (C{if}, C{try}/C{catch}, C{var}/C{let}/C{const}, C{return},
C{throw}, C{new}, C{function}, arrows), regular-expression literals only
where an operand is expected.  Nothing here raises; the work is bounded by
the caller's C{limit} and L{MAX_TOKENS}.
"""

from __future__ import annotations

import re

from veil.waf.wordsets import words

#: Tokens read per scan.
MAX_TOKENS = 1024

#: Functions that injected code calls, after it broke out of a string.
SINKS = words("alert confirm prompt eval settimeout setinterval setimmediate function execscript "
    "fetch import write writeln open fromcharcode atob constructor msgbox "
    "sendbeacon postmessage globaleval getscript")
#: The sinks that count in a value read whole as code (no break-out): those
#: that only JavaScript attacks call -- not eval, open or write, which
#: Python and other code pasted into a form call too.
STRICT_SINKS = words("alert confirm prompt msgbox execscript fromcharcode constructor settimeout "
    "setinterval atob")
#: Names whose assignment or mention is an attack in code that broke out of
#: a string; in a value read whole as code, only when named through a
#: string in brackets (C{document["cookie"]}), which is obfuscation.
TARGETS = words("location cookie domain innerhtml outerhtml srcdoc")

_TOKEN = re.compile(
    r"""
    (?P<ws>[\t\x0b\x0c \xa0\ufeff\u1680\u2000-\u200a\u202f\u205f\u3000]+)
  | (?P<nl>[\n\r\u2028\u2029]+)
  | (?P<line>//[^\n\r\u2028\u2029]*|<!--[^\n\r]*)
  | (?P<block>/\*(?:.*?\*/|.*))
  | (?P<str>'(?:[^'\\\n\r]++|\\.)*+'?|"(?:[^"\\\n\r]++|\\.)*+"?)
  | (?P<tpl>`(?:[^`\\]++|\\.)*+`?)
  | (?P<num>0[xXoObB][0-9a-fA-F_]+n?|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?n?)
  | (?P<id>(?:[A-Za-z_$\u00aa-\uffff]|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]+\})
            (?:[\w$\u00aa-\uffff]|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]+\})*)
  | (?P<op>>>>=|\.\.\.|===|!==|\*\*=|<<=|>>=|>>>|&&=|\|\|=|\?\?=|=>|==|!=|<=|>=|&&|\|\||\?\?
           |\?\.|\+\+|--|\+=|-=|\*=|/=|%=|&=|\|=|\^=|\*\*|<<|>>|[-+*/%&|^!~?:=<>.,;@\#])
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SUBSTITUTION = re.compile(r"\$\{\s*([\w$]+)\s*\}")
_REGEX = re.compile(r"/(?:[^/\\\[\n\r]|\\.|\[(?:[^\]\\\n\r]|\\.)*\])+/[a-z]*")
_ESCAPE = re.compile(r"\\u\{([0-9a-fA-F]+)\}|\\u([0-9a-fA-F]{4})")
_UNARY_WORDS = words("typeof void delete new await yield")
_BINARY_WORDS = words("in instanceof")
_STATEMENT_WORDS = words("var let const return throw else do try finally")
_HEAD_WORDS = words("if while for with switch catch")
_ASSIGN = words("= += -= *= /= %= &= |= ^= **= <<= >>= >>>= &&= ||= ??=")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_OPERAND = 0
_AFTER = 1
_MEMBER = 2    # after '.' or '?.': a property name is required
_HEAD = 3      # after if/while/for/catch: '(' is required


def _name(raw: str) -> str:
    """An identifier with its \\u escapes decoded, in ASCII lower case."""
    if "\\" in raw:
        raw = _ESCAPE.sub(lambda m: _chr(m.group(1) or m.group(2)), raw)
    return raw.lower() if raw.isascii() else raw.translate(_ASCII_LOWER)


def _chr(hexdigits: str) -> str:
    n = int(hexdigits[:6], 16)
    return chr(n) if n < 0x110000 else "\ufffd"


def scan(text: str, pos: int, opened: bool, limit: int,
         sinks: frozenset = SINKS) -> str | None:
    """
    Read C{text[pos:limit]} as JavaScript and return the sink it reaches
    (e.g. C{"alert"}, C{"location="}); C{""} if the text is JavaScript to
    its end (or to L{MAX_TOKENS}) without reaching one; C{None} if it stops
    being JavaScript or holds no token.  With C{opened}, the
    reading starts just after a string literal (the one the value broke
    out of), so an operator must come first; closing brackets that the text
    did not open are the brackets of the page's own code.  C{sinks} are the
    function names that count.
    """
    state = _AFTER if opened else _OPERAND
    stack: list[str] = []
    last = ""           # the last operand's name, lower case ("" if not a name)
    sink_group = ""     # a sink named alone in parentheses: (alert)
    handler = False     # an event handler property was just assigned: onerror=
    count = 0
    match = _TOKEN.match
    while pos < limit:
        m = match(text, pos, limit)
        kind = m.lastgroup
        tok = m.group()
        pos = m.end()
        if kind == "ws" or kind == "block" or kind == "line":
            continue
        if kind == "nl":
            if state == _AFTER and not stack:
                state = _OPERAND   # automatic semicolon insertion
                last = ""
            continue
        count += 1
        if count > MAX_TOKENS:
            return ""

        if state == _OPERAND:
            if kind == "id":
                name = _name(tok)
                if name in _UNARY_WORDS or name in _STATEMENT_WORDS:
                    last = ""
                    continue
                if name in _HEAD_WORDS:
                    state = _HEAD
                    continue
                if name == "function":
                    continue
                state = _AFTER
                last = name
                if opened and name in TARGETS and name != "location":
                    return name
                if handler and name in SINKS:
                    return "on...=" + name   # onerror=eval;throw '...'
                handler = False
            elif kind == "num" or kind == "str" or kind == "tpl":
                if kind == "tpl" and "${" in tok:
                    found = scan(tok, tok.find("${") + 2, False, len(tok), sinks)
                    if found:
                        return found
                state = _AFTER
                last = _quoted_sink(tok, sinks) if kind == "str" else ""
                if last in TARGETS and last != "location" and stack and stack[-1] == "[":
                    return last
            elif kind == "open":
                stack.append(tok)
                last = ""
            elif kind == "close":
                if not stack:
                    return None
                top = stack.pop()
                if _pair(top) != tok:
                    return None
                state = _OPERAND if top == "H" else _AFTER
                last = ""
            elif kind == "op":
                if tok == "/":
                    r = _REGEX.match(text, pos - 1, limit)
                    if r is None:
                        return None
                    pos = r.end()
                    state = _AFTER
                    last = ""
                elif tok in ("!", "~", "+", "-", "++", "--", "...", ";"):
                    pass
                elif tok == "," and stack and stack[-1] in "([":
                    pass  # an elision: f(, x), [, x]
                else:
                    return None
            else:
                return None

        elif state == _AFTER:
            if kind == "op":
                if tok == "." or tok == "?.":
                    state = _MEMBER
                    continue
                if opened and tok in _ASSIGN and last in TARGETS:
                    return last + "="
                handler = tok == "=" and last.startswith("on") and len(last) > 4
                if tok == "++" or tok == "--":
                    continue
                state = _OPERAND
                last = ""
            elif kind == "open":
                if tok == "(":
                    if last in sinks:
                        return last
                    if sink_group:
                        return sink_group
                stack.append(tok)
                state = _OPERAND
                last = ""
            elif kind == "tpl":
                # alert`1`; [].sort.call`${alert}1`
                if last in sinks:
                    return last
                for m in _SUBSTITUTION.finditer(tok):
                    if _name(m.group(1)) in sinks:
                        return _name(m.group(1))
                last = ""
            elif kind == "close":
                top = stack.pop() if stack else ""
                if (top and _pair(top) != tok) or (not top and not opened):
                    return None
                if top == "H" or tok == "}":
                    # if (...), a block's end: a statement may follow.
                    state = _OPERAND
                    last = sink_group = ""
                elif tok == ")":
                    # (alert)(1)
                    sink_group = last if last in sinks else ""
                    last = ""
                else:
                    # window['alert'](1), document['cookie']
                    sink_group = ""
                    last = last if last in sinks or last in TARGETS else ""
                continue
            elif kind == "id":
                name = _name(tok)
                if name in _BINARY_WORDS:
                    state = _OPERAND
                    last = ""
                elif name in ("else", "catch", "finally"):
                    state = _HEAD if name == "catch" else _OPERAND
                    last = ""
                else:
                    return None
            else:
                return None
            sink_group = ""

        elif state == _MEMBER:
            if kind == "id":
                name = _name(tok)
                state = _AFTER
                if name in ("call", "apply", "bind") and last in sinks:
                    return last
                last = name
                if opened and name in TARGETS and name != "location":
                    return name
            elif kind == "open" and tok == "(":
                # a?.(b)
                if last in sinks:
                    return last
                stack.append(tok)
                state = _OPERAND
            else:
                return None

        else:  # _HEAD
            if kind == "open" and tok == "(":
                stack.append("H")
                state = _OPERAND
            elif kind == "open" and tok == "{":
                stack.append(tok)
                state = _OPERAND
            else:
                return None
    return "" if count else None


def is_code(text: str, pos: int, limit: int) -> bool:
    """Whether C{text[pos:limit]} reads as JavaScript (the content of a
    C{<script>} element, rather than prose about one)."""
    return scan(text, pos, False, limit) is not None


def _pair(opening: str) -> str:
    """The closing bracket of an opening one ("H": the head of an if/while/catch)."""
    return "]" if opening == "[" else ("}" if opening == "{" else ")")


def _quoted_sink(literal: str, sinks: frozenset) -> str:
    """The sink or target a string literal names (C{window['alert']},
    C{document['cookie']}), else C{""}."""
    body = literal[1:-1].translate(_ASCII_LOWER) if len(literal) >= 2 else ""
    return body if body in sinks or body in TARGETS else ""
