"""
Decoding of what clients send, shared by the request view and the
transformations: percent-decoding with the forms attackers use to hide
characters (overlong UTF-8, IIS C{%uXXXX}), and path normalisation.

Every function here takes text and returns text and never raises: invalid
escapes are kept as they are, bytes that are not UTF-8 become the Latin-1
character of the same value.
"""

from __future__ import annotations

import codecs
import re
from binascii import a2b_qp
from urllib.parse import unquote_to_bytes

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+|%[uU][0-9A-Fa-f]{4}")
_INVALID_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})")
#: Hexadecimal digits as NUL (and NUL as 1): C{%XX} escapes become C{%\0\0}.
_HEX_MARKS = bytes(0 if chr(b) in "0123456789abcdefABCDEF" else 1 if b == 0 else b
                   for b in range(256))


def _lenient(error: UnicodeError) -> tuple[str, int]:
    """
    The C{veil-lenient} decoding error handler: an overlong UTF-8 sequence
    (C{C0 AF} for C{/}) becomes the character it spells, any other invalid
    byte its Latin-1 character.
    """
    if not isinstance(error, UnicodeDecodeError):
        raise error
    data, start = error.object, error.start
    first = data[start]
    rest = data[start + 1:start + 4]
    if 0xC0 <= first <= 0xC1 and len(rest) >= 1 and 0x80 <= rest[0] <= 0xBF:
        return chr(((first & 0x1F) << 6) | (rest[0] & 0x3F)), start + 2
    if first == 0xE0 and len(rest) >= 2 and 0x80 <= rest[0] <= 0x9F and 0x80 <= rest[1] <= 0xBF:
        return chr(((rest[0] & 0x3F) << 6) | (rest[1] & 0x3F)), start + 3
    if (first == 0xF0 and len(rest) >= 3 and 0x80 <= rest[0] <= 0x8F
            and all(0x80 <= b <= 0xBF for b in rest[1:3])):
        return chr(((rest[0] & 0x3F) << 12) | ((rest[1] & 0x3F) << 6) | (rest[2] & 0x3F)), \
            start + 4
    return chr(first), start + 1


codecs.register_error("veil-lenient", _lenient)


def text_of(data: bytes) -> str:
    """Bytes as text: UTF-8, with overlong forms and stray bytes as L{_lenient} says."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "veil-lenient")


def _unescape(match: re.Match[str]) -> str:
    escaped = match.group()
    if escaped[1] in "uU":
        return chr(int(escaped[2:], 16))  # noqa: FURB166 - %u, not 0x
    return text_of(bytes.fromhex(escaped.replace("%", "")))


def percent_decode(text: str, plus: bool = False) -> str:
    """
    C{text} with C{%XX} runs decoded as UTF-8 (leniently) and C{%uXXXX}
    decoded; with C{plus}, C{+} is a space (query strings and forms).
    Returns C{text} itself when there is nothing to decode.
    """
    if plus and "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    if "%u" not in text and "%U" not in text:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate (from JSON): decode escape by escape
        else:
            marked = data.translate(_HEX_MARKS)
            if marked.count(b"%\0\0") == marked.count(b"%"):
                # Every % starts a %XX escape: as quoted-printable (=XX, with
                # the = of the text written =3D), decoded in C.
                return text_of(a2b_qp(data.replace(b"=", b"=3D").replace(b"%", b"=")))
            return text_of(unquote_to_bytes(data))
    return _ESCAPES.sub(_unescape, text)


def has_invalid_escape(text: str) -> bool:
    """Whether C{text} has a C{%} that starts no valid escape."""
    return "%" in text and _INVALID_ESCAPE.search(text) is not None


def normalise_path(raw: str) -> str:
    """
    The path a server will most likely resolve C{raw} (a request target's
    path, before any query) to: percent-decoded once, backslashes as
    slashes, NULs removed, C{;} path parameters dropped from each segment,
    repeated slashes folded, and C{.} and C{..} segments resolved without
    climbing above the root.  Always starts with C{/}.
    """
    path = percent_decode(raw)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "\x00" in path:
        path = path.replace("\x00", "")
    if ";" in path:
        path = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    if "//" not in path and "/." not in path and path.startswith("/") and path != "":
        return path
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")
