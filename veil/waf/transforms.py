"""
The transformations a rule applies to a value before its operator sees it.

Each is a function of text to text that never raises and returns its
argument itself when it has nothing to change (so unchanged values cost a
membership test, not a copy).  L{TRANSFORMS} names them for rule files.

The engine applies a chain to many values at once: the values of a request
joined with L{SEP}, transformed as one string, then split again where the
separators are (see L{apply_joined}).  Every transformation here keeps the
separators it is given (the removing ones exclude L{SEP} from what they
remove); one that decodes a separator out of a value is caught by the count
check in L{apply_joined}, which then transforms each value on its own.
"""

from __future__ import annotations

import binascii
import functools
import html
import re
import string
import unicodedata
from collections.abc import Callable

from veil.waf.decoding import percent_decode

#: Separates the values of a joined buffer (ASCII record separator).
SEP = "\x1e"
#: What a separator inside a value becomes (ASCII unit separator).
SEP_STANDIN = "\x1f"

#: How many times C{urldecode} decodes a value at most.
URLDECODE_PASSES = 3

Transform = Callable[[str], str]


def urldecode(text: str) -> str:
    """Percent-decoding (C{%XX}, C{%uXXXX}, overlong UTF-8) repeated until stable, at most 3 times."""
    for _ in range(URLDECODE_PASSES):
        decoded = percent_decode(text)
        if decoded is text or decoded == text:
            return text
        text = decoded
    return text


#: How many times C{htmldecode} decodes a value at most.
HTMLDECODE_PASSES = 2


#: A character reference: numeric with or without C{;}, named with C{;} or
#: one of the few that browsers decode without it.
_CHARREF = re.compile(r"&(?:#[0-9]{1,8};?|#[xX][0-9a-fA-F]{1,7};?|[A-Za-z][A-Za-z0-9]{1,31};"
                      r"|(?:lt|gt|amp|quot|nbsp|AMP|LT|GT|QUOT)(?![A-Za-z0-9;]))")


def _charref(match: re.Match[str]) -> str:
    return html.unescape(match.group())


def htmldecode(text: str) -> str:
    """
    HTML character references (C{&lt;}, C{&#60;}, C{&#x3c;}, C{&colon;}),
    decoded twice at most (C{&amp;lt;} is C{<}).  Named references need
    their C{;} except the few browsers decode without one (C{&lt}), so
    query strings (C{&para=1}) are left alone.
    """
    for _ in range(HTMLDECODE_PASSES):
        if "&" not in text:
            return text
        decoded = _CHARREF.sub(_charref, text)
        if decoded == text:
            return text
        text = decoded
    return text


_JS_ESCAPE = re.compile(
    r"\\(?:u\{([0-9A-Fa-f]{1,6})\}|u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2})|([^\w\s\x1e])|([nr0])(?![\w]))")
_JS_LETTERS = {"n": "\n", "r": "\r", "0": "\x00"}


def _js_unescape(match: re.Match[str]) -> str:
    code = match.group(1) or match.group(2) or match.group(3)
    if code is None:
        return match.group(4) or _JS_LETTERS[match.group(5)]
    number = int(code, 16)
    return chr(number) if number <= 0x10FFFF else match.group()


def jsdecode(text: str) -> str:
    """
    JavaScript/JSON escapes: C{\\u0027}, C{\\u{27}}, C{\\x27}, C{\\/}-style
    escaped punctuation, and C{\\n}, C{\\r}, C{\\0} where no letter follows
    (so that C{C:\\new\\temp} stays a Windows path).
    """
    if "\\" not in text:
        return text
    return _JS_ESCAPE.sub(_js_unescape, text)


#: Base64 (both alphabets) characters as "a", everything else as a space:
#: runs are then found by a literal search, much faster than a character
#: class repeated over the whole text.
_B64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/_-")
_B64_MAP = {code: "a" if chr(code) in _B64_ALPHABET else " " for code in range(0x3000)}
#: The shortest run tried: shorter ones are words, numbers and codes far
#: more often than hidden payloads.
B64_MIN = 12
_B64_RUN = re.compile("a" * B64_MIN + "+")
_B64_URLSAFE = str.maketrans("-_", "+/")
_TEXT_SPACE = str.maketrans("", "", "\t\r\n\x00")


def _b64_text(token: str) -> str | None:
    """What C{token} decodes to if it is Base64 (standard or URL-safe) of printable UTF-8 text."""
    if "-" in token or "_" in token:
        if "+" in token or "/" in token:
            return None
        token = token.translate(_B64_URLSAFE)
    token = token.rstrip("=")
    if len(token) % 4 == 1:
        return None
    try:
        data = binascii.a2b_base64(token + "=" * (-len(token) % 4), strict_mode=True)
        text = data.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if len(text) < 4 or not text.translate(_TEXT_SPACE).isprintable():
        return None
    return text


@functools.lru_cache(maxsize=4096)
def _b64_decoded(token: str) -> str | None:
    """L{_b64_text} of a token, also without leading slashes (a path); remembered."""
    # Mixed case is what Base64 of text looks like: all-lower words, hex
    # digests and upper-case codes are left alone cheaply.
    if token.islower() or token.isupper() or token.isdigit():
        return None
    decoded = _b64_text(token)
    if decoded is None and token[0] == "/":
        decoded = _b64_text(token.lstrip("/"))
        if decoded is not None:
            decoded = "/" + decoded
    return decoded


def base64(text: str) -> str:
    """
    Each run of 12 or more Base64 characters (standard or URL-safe, padding
    optional, a leading C{/} allowed as in a path) that decodes to
    printable UTF-8 text is replaced by that text; anything else (binary,
    hashes, ordinary words) is left alone.
    """
    if len(text) < B64_MIN:
        return text
    pieces: list[str] = []
    done = 0
    size = len(text)
    for match in _B64_RUN.finditer(text.translate(_B64_MAP)):
        start, end = match.span()
        padded = end
        while padded < size and padded - end < 2 and text[padded] == "=":
            padded += 1
        decoded = _b64_decoded(text[start:padded])
        if decoded is not None:
            pieces.append(text[done:start])
            pieces.append(decoded)
            done = padded
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


#: A run of Base64 characters without a letter, long enough to be decoded.
_LETTERLESS_RUN = re.compile(f"[0-9+/_-]{{{B64_MIN}}}")


def base64_changes(text: str) -> bool:
    """
    Whether L{base64} changes C{text}, answered cheaply for most text: a
    run is decoded only if it has both cases or no letter at all, so text
    all in one case without a long letterless run is left alone.
    """
    if (text.islower() or text.isupper()) and _LETTERLESS_RUN.search(text) is None:
        return False
    return base64(text) is not text


def lowercase(text: str) -> str:
    """Lower case."""
    return text.lower()


_SPACES = re.compile(r"[ \t\n\r\f\v\xa0]+")


def compress(text: str) -> str:
    """Runs of whitespace as one space."""
    return _SPACES.sub(" ", text)


_SQL_COMMENTS = re.compile(
    r"/\*!(?:\d{5,6})?|/\*[^\x1e]*?\*/|/\*[^\x1e]*(?=\x1e|$)|\*/|--[^\x1e\n]*|#[^\x1e\n]*")


def sqlcomments(text: str) -> str:
    """
    SQL comments (C{/* */}, C{--}, C{#}) as a space; the content of
    MySQL's executable comments (C{/*!50000union*/}) is kept.
    """
    if "/*" not in text and "--" not in text and "#" not in text:
        # A stray */ (as in Accept: */*) is all there is, or nothing.
        return text.replace("*/", " ") if "*/" in text else text
    return _SQL_COMMENTS.sub(" ", text)


_HTML_COMMENTS = re.compile(r"<!--[^\x1e]*?-->|<!--[^\x1e]*(?=\x1e|$)")


def htmlcomments(text: str) -> str:
    """HTML comments removed (an unterminated one to the end of the value)."""
    if "<!--" not in text:
        return text
    return _HTML_COMMENTS.sub("", text)


_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                        "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f"
                        "\ufeff\uffa0\ufff0-\ufff8]")


def nfkc(text: str) -> str:
    """
    Unicode NFKC (full-width, compatibility and ligature forms as their
    plain characters), and invisible characters removed (zero-width
    spaces and joiners, the byte order mark, soft hyphens, bidirectional
    controls).
    """
    if text.isascii():
        return text
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


_BRACES = re.compile(r"\{([^{}\s,\x1e]+(?:,[^{}\s,\x1e]*)+)\}")
_QUOTES = str.maketrans("", "", "'\"^")
_SHELL_QUOTING = re.compile(r"""\\(?=[^\x1e])|\$[@*#?!$_-]|\$\d|\$\{\s*\}""")
_SHELL_IFS = re.compile(r"\$\{?IFS\}?")


def shellquotes(text: str) -> str:
    """
    Shell and C{cmd.exe} quoting that hides command names: quotes and
    backslashes (C{c''at}, C{c\\at}), special parameters that expand to
    nothing in an attack (C{$@}, C{$*}, C{$?}, C{$!}, C{$_}, C{$1}, C{${}}),
    carets (C{w^hoami}), C{$IFS} as a space and brace lists as words
    (C{{cat,/etc/passwd}}).
    """
    if "IFS" in text:
        text = _SHELL_IFS.sub(" ", text)
    if "{" in text and "," in text:
        text = _BRACES.sub(lambda m: m.group(1).replace(",", " "), text)
    if "'" in text or '"' in text or "^" in text:
        text = text.translate(_QUOTES)
    if "\\" in text or "$" in text:
        text = _SHELL_QUOTING.sub("", text)
    return text


def slashes(text: str) -> str:
    """Backslashes as slashes (C{..\\..\\} as C{../../})."""
    if "\\" not in text:
        return text
    return text.replace("\\", "/")


def removenulls(text: str) -> str:
    """NUL characters removed."""
    if "\x00" not in text:
        return text
    return text.replace("\x00", "")


def length(text: str) -> str:
    """The value's length in characters, as a decimal number (for numeric comparisons)."""
    return str(len(text))


#: Transformation names, as rule files use them.
TRANSFORMS: dict[str, Transform] = {
    "urldecode": urldecode,
    "htmldecode": htmldecode,
    "jsdecode": jsdecode,
    "base64": base64,
    "lowercase": lowercase,
    "compress": compress,
    "sqlcomments": sqlcomments,
    "htmlcomments": htmlcomments,
    "nfkc": nfkc,
    "shellquotes": shellquotes,
    "slashes": slashes,
    "removenulls": removenulls,
    "length": length,
}

#: For the transformations whose change flag matches many values they
#: leave alone (L{veil.waf.patterns.CONFIRMED}): whether it changes a value.
CHANGES: dict[str, Callable[[str], bool]] = {"base64": base64_changes}

#: Transformations that only make sense on one value at a time.
PER_VALUE_ONLY = frozenset({"length"})


def apply_joined(transform: Transform, text: str, separators: int) -> str:
    """
    C{transform} applied to C{text}, a buffer of values joined with L{SEP}
    that holds C{separators} of them.  When the transformation changes
    the number of separators (it decoded one out of a value), each value
    is transformed on its own and the separators it produced are replaced
    by L{SEP_STANDIN}, so the values stay where they were.
    """
    out = transform(text)
    if out is text or out.count(SEP) == separators:
        return out
    return SEP.join(transform(part).replace(SEP, SEP_STANDIN) for part in text.split(SEP))
