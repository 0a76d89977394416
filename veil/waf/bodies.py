"""
Request bodies as the values the WAF inspects: URL-encoded forms, JSON,
XML and multipart/form-data, each parsed from a bounded prefix of the body
(the whole body when it is complete).

A parser never raises: what it cannot parse is recorded as an I{anomaly}
(a malformed body declared as JSON, XML or multipart is one; protocol rules
score it) and the body is then inspected whole, as text, so that a payload
is not hidden by malforming its container.

XML is parsed with expat with entity expansion off: internal entity
references are reported as they are written (C{&name;}), parameter and
external entities are never read, and nothing is ever fetched.  The
DOCTYPE declaration, with any ENTITY declarations, is itself a value
(C{xml:#doctype}) for the XXE rules.
"""

from __future__ import annotations

import json
import re
from itertools import repeat
from operator import itemgetter
from typing import Any
from xml.parsers import expat

import attrs

from veil.waf.decoding import has_invalid_escape, percent_decode, text_of

#: At most this many values (arguments, JSON strings, XML texts, parts)
#: are taken from one body; more is the C{limits} anomaly.
MAX_VALUES = 4096
#: The start of each uploaded file that is inspected, in bytes.
FILE_CONTENT_LIMIT = 16 * 1024
#: XML element paths are cut to this many characters.
MAX_XML_PATH = 256

# Anomaly kinds (what protocol rules name in C{anomaly = ...}).
MALFORMED_JSON = "json"
MALFORMED_XML = "xml"
MALFORMED_MULTIPART = "multipart"
BAD_URLENCODING = "urlencoding"
LIMITS = "limits"
TYPE_MISMATCH = "mismatch"
MULTIPART_EVASION = "multipart-evasion"

ANOMALIES = (MALFORMED_JSON, MALFORMED_XML, MALFORMED_MULTIPART, BAD_URLENCODING, LIMITS,
             TYPE_MISMATCH, MULTIPART_EVASION)

# Body kinds.
FORM = "form"
JSON = "json"
XML = "xml"
MULTIPART = "multipart"
TEXT = "text"

_TEXT_TYPES = frozenset({
    "application/javascript", "application/graphql", "application/x-ndjson",
    "application/x-yaml", "application/yaml", "application/sql", "application/csp-report",
})


def body_kind(media_type: str) -> str | None:
    """
    How a body of this media type (lower case, without parameters; empty
    when there is no C{Content-Type}) is inspected: one of the kinds, or
    L{None} for bodies that stream uninspected (images, video, archives,
    octet streams).
    """
    if media_type == "application/x-www-form-urlencoded":
        return FORM
    if media_type == "multipart/form-data":
        return MULTIPART
    if media_type.endswith(("/json", "+json")):
        return JSON
    if media_type.endswith(("/xml", "+xml")):
        return XML
    if media_type.startswith("text/") or media_type in _TEXT_TYPES or not media_type:
        return TEXT
    return None


def split_content_type(value: str) -> tuple[str, dict[str, str]]:
    """A C{Content-Type} value as its lower-cased media type and parameters."""
    media, _, rest = value.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = raw[1:-1].replace('\\"', '"')
        params.setdefault(key, raw.strip())
    return media.strip().lower(), params


_PARAM = re.compile(r';\s*([\w!#$&+.^`|~*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@attrs.define(eq=False)
class Body:
    """What one body yields."""

    #: Arguments with their names (forms and multipart fields).
    args: list[tuple[str, str]] = attrs.Factory(list)
    #: JSON strings (the members of objects, then those of arrays); their
    #: names (paths) are found again on demand by L{Body.json_paths}.
    json_values: list[str] = attrs.Factory(list)
    #: Argument names without their own value entry (JSON keys).
    names: list[str] = attrs.Factory(list)
    #: XML texts and attribute values by path, and the DOCTYPE.
    xml: list[tuple[str, str]] = attrs.Factory(list)
    #: Uploaded files: (field, file name) and (field, start of content).
    files: list[tuple[str, str]] = attrs.Factory(list)
    contents: list[tuple[str, str]] = attrs.Factory(list)
    #: The body as text, when it is inspected whole.
    text: str | None = None
    anomalies: list[tuple[str, str]] = attrs.Factory(list)
    #: The JSON source, for L{json_paths}.
    _json: bytes = b""
    _paths: dict[str, list[str]] | None = None

    def json_paths(self, value: str) -> list[str]:
        """The paths (C{items[].name}) of every JSON string equal to C{value}."""
        if self._paths is None:
            self._paths = _json_paths(self._json)
        return self._paths.get(value, [])


def parse_body(data: bytes, complete: bool, media_type: str, params: dict[str, str]) -> Body:
    """The values of a body of C{media_type}; C{complete} is false for a prefix."""
    body = Body()
    kind = body_kind(media_type)
    if kind is None or not data:
        return body
    if kind == FORM:
        _form(body, data, params)
    elif kind == JSON:
        _json_body(body, data, complete, declared=True)
    elif kind == XML:
        _xml_body(body, data, complete, params, declared=True)
    elif kind == MULTIPART:
        _multipart(body, data, complete, params)
    elif not media_type:
        _sniffed(body, data, complete, params)
    else:
        body.text = _decoded(data, params)
    return body


def _decoded(data: bytes, params: dict[str, str]) -> str:
    charset = params.get("charset", "").lower()
    if charset and charset not in ("utf-8", "utf8"):
        try:
            return data.decode(charset, "replace")
        except LookupError:
            pass
    return text_of(data)


#: What the names and values of a query or form are decoded joined with.
_JOINER = "\x1e"
#: (name, value) of a partitioned C{name=value}.
_NAME_VALUE = itemgetter(0, 2)


def parse_pairs(raw: str, out: list[tuple[str, str]], limit: int = MAX_VALUES) -> bool:
    """
    C{a=1&b=2} into C{out} (names and values percent-decoded, C{+} a
    space); returns whether it stopped at C{limit}.

    The names and values are split, then decoded together, joined with a
    control character (L{_JOINER}): one decoding of the whole, in C,
    instead of one call per name and value.  When that does not give them
    back one for one (a value holds the character, or an escape decodes
    to it), or the escapes are of the kinds decoded one by one
    (C{%uXXXX}, text that is not UTF-8), each is decoded on its own.
    """
    parts = raw.replace("+", " ").split("&") if "+" in raw else raw.split("&")
    if "" in parts:
        parts = [part for part in parts if part]
    room = max(limit - len(out), 0)
    pairs = list(map(_NAME_VALUE, map(str.partition, parts[:room], repeat("="))))
    if "%" in raw and pairs:
        pieces = [piece for pair in pairs for piece in pair]
        decoded = None
        if "%u" not in raw and "%U" not in raw:
            decoded = percent_decode(_JOINER.join(pieces)).split(_JOINER)
            if len(decoded) != len(pieces):
                decoded = None
        if decoded is None:
            decoded = [percent_decode(piece) for piece in pieces]
        pairs = list(zip(decoded[0::2], decoded[1::2]))
    out.extend(pairs)
    return len(parts) > room


def _form(body: Body, data: bytes, params: dict[str, str]) -> None:
    text = _decoded(data, params)
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[", "<") and "=" not in stripped[:64]:
        body.anomalies.append((TYPE_MISMATCH, "body"))
        body.text = text
        return
    if parse_pairs(text, body.args):
        body.anomalies.append((LIMITS, "body"))
    # The whole form as well (with + as the space it stands for), as the
    # query is inspected whole (uri): a payload with & in it is split
    # across arguments.
    if "&" in text:
        body.text = text.replace("+", " ")
    if has_invalid_escape(text):
        body.anomalies.append((BAD_URLENCODING, "body"))


# -- JSON ----------------------------------------------------------------------------------


class _TooMany(Exception):
    pass


def _strings_in(items: list[Any], out: list[str]) -> None:
    """The strings of a JSON array (and of the arrays in it) into C{out}."""
    out.extend(filter(_is_str, items))
    for inner in filter(_is_list, items):
        _strings_in(inner, out)


def _json_body(body: Body, data: bytes, complete: bool, declared: bool) -> bool:
    # json's C parser hands each object's (key, value) pairs to the hook as
    # it completes them (inner objects first) and the hook here is a C
    # method, so the document is never built: the pairs are all there is
    # to read.  An object's value in its parent is the hook's None.
    pairs: list[tuple[str, Any]] = []
    try:
        top = json.loads(data, object_pairs_hook=pairs.extend)
    except RecursionError:
        body.anomalies.append((LIMITS, "body"))
        body.text = text_of(data)
        return True
    except ValueError:
        if not complete:
            _json_prefix(body, data)
            return True
        if declared:
            body.anomalies.append((MALFORMED_JSON, "body"))
            body.text = text_of(data)
        return False
    values, names = body.json_values, body.names
    if pairs:
        keys, members = zip(*pairs)
        names.extend(keys)
        values.extend(filter(_is_str, members))
        if b"[" in data:
            for array in filter(_is_list, members):
                _strings_in(array, values)
    kind = type(top)
    if kind is str:
        values.append(top)
    elif kind is list:
        _strings_in(top, values)
    if len(values) + len(names) > 2 * MAX_VALUES:
        body.anomalies.append((LIMITS, "body"))
        del values[MAX_VALUES:]
        del names[MAX_VALUES:]
    body._json = data
    return True


#: Exact type tests at C speed (JSON makes no subclasses).
_is_str = str.__instancecheck__
_is_list = list.__instancecheck__


_JSON_STRING = re.compile(rb'"((?:[^"\\]|\\.)*)"(\s*:)?')


def _json_prefix(body: Body, data: bytes) -> None:
    """The strings of a JSON body's prefix (the body goes on past the limit)."""
    for raw, colon in _JSON_STRING.findall(data):
        try:
            text = json.loads(b'"' + raw + b'"')
        except ValueError:
            text = text_of(raw)
        (body.names if colon else body.json_values).append(text)
        if len(body.json_values) + len(body.names) > 2 * MAX_VALUES:
            body.anomalies.append((LIMITS, "body"))
            return
    body._json = data


def _json_paths(data: bytes) -> dict[str, list[str]]:
    """Every JSON string's paths, by value (the slow path: only for reporting a match)."""
    paths: dict[str, list[str]] = {}
    try:
        top = json.loads(data)
    except (ValueError, RecursionError):
        for raw, colon in _JSON_STRING.findall(data):
            if not colon:
                try:
                    text = json.loads(b'"' + raw + b'"')
                except ValueError:
                    text = text_of(raw)
                paths.setdefault(text, ["$"])
        return paths
    stack: list[tuple[str, Any]] = [("", top)]
    while stack:
        path, node = stack.pop()
        kind = type(node)
        if kind is dict:
            for key, value in reversed(list(node.items())):
                stack.append((f"{path}.{key}" if path else key, value))
        elif kind is list:
            inner = path + "[]"
            for value in reversed(node):
                stack.append((inner, value))
        elif kind is str:
            found = paths.setdefault(node, [])
            name = path or "$"
            if name not in found:
                found.append(name)
    return paths


# -- XML -----------------------------------------------------------------------------------


def _xml_body(body: Body, data: bytes, complete: bool, params: dict[str, str],
              declared: bool) -> bool:
    out = body.xml
    stack: list[tuple[str, list[str]]] = []
    doctype: list[tuple[int, str, bool]] = []

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def full() -> None:
        if len(out) >= MAX_VALUES:
            raise _TooMany()

    def start(name: str, attributes: dict[str, str]) -> None:
        path = (stack[-1][0] if stack else "") + "/" + name
        if len(path) > MAX_XML_PATH:
            path = path[:MAX_XML_PATH]
        stack.append((path, []))
        for key, value in attributes.items():
            if value:
                full()
                out.append((f"{path}@{key}", value))

    def end(name: str) -> None:
        path, parts = stack.pop()
        text = "".join(parts).strip()
        if text:
            full()
            out.append((path, text))

    def characters(text: str) -> None:
        if stack:
            stack[-1][1].append(text)

    def default(text: str) -> None:
        # With a default handler set, expat passes references to internal
        # entities here instead of expanding them.
        if stack and text.startswith("&"):
            stack[-1][1].append(text)

    def doctype_start(name: str | None, system_id: str | None, public_id: str | None,
                      has_internal_subset: int) -> None:
        # The declaration as expat decoded it (so whatever the body's
        # encoding, and whatever its literals hold): name and identifiers.
        # Without an internal subset expat reports it at its closing ">";
        # with one, at its "[", from where the subset is read raw.
        head = "<!DOCTYPE " + (name or "")
        if public_id is not None:
            head += f' PUBLIC "{public_id}"' + (f' "{system_id}"' if system_id else "")
        elif system_id is not None:
            head += f' SYSTEM "{system_id}"'
        doctype.append((parser.CurrentByteIndex, head, bool(has_internal_subset)))

    def doctype_end() -> None:
        if doctype:
            at, head, subset = doctype[0]
            if not subset:
                out.append(("#doctype", head + ">"))
                return
            close = data.find(b">", max(parser.CurrentByteIndex, at))
            stop = len(data) if close < 0 else close + 1
            out.append(("#doctype", head + " " + text_of(data[at:stop])))

    def instruction(target: str, text: str) -> None:
        full()
        out.append(("#pi", f"<?{target} {text}?>"))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.DefaultHandler = default
    parser.StartDoctypeDeclHandler = doctype_start
    parser.EndDoctypeDeclHandler = doctype_end
    parser.ProcessingInstructionHandler = instruction
    try:
        parser.Parse(data, complete)
    except _TooMany:
        body.anomalies.append((LIMITS, "body"))
    except (expat.ExpatError, ValueError, RecursionError):
        if doctype and not any(name == "#doctype" for name, _ in out):
            at, head, _ = doctype[0]
            out.append(("#doctype", head + " " + text_of(data[at:at + 4096])))
        if declared:
            body.anomalies.append((MALFORMED_XML, "body"))
            body.text = _decoded(data, params)
        return False
    if not complete and stack:
        # The rest is past the limit: keep the text of the open elements.
        for path, parts in reversed(stack):
            text = "".join(parts).strip()
            if text:
                out.append((path, text))
    return True


# -- multipart -----------------------------------------------------------------------------


def _multipart(body: Body, data: bytes, complete: bool, params: dict[str, str]) -> None:
    boundary = params.get("boundary", "").encode("utf-8", "replace")
    if not boundary or len(boundary) > 200:
        body.anomalies.append((MALFORMED_MULTIPART, "headers:content-type"))
        body.text = text_of(data)
        return
    delimiter = b"--" + boundary
    start = data.find(delimiter)
    if start < 0 or (start > 0 and data[start - 1:start] != b"\n"):
        if complete or len(data) > len(delimiter) + 2:
            body.anomalies.append((MALFORMED_MULTIPART, "body"))
            body.text = text_of(data)
        return
    next_delimiter = re.compile(rb"\r?\n" + re.escape(delimiter))
    position = start + len(delimiter)
    parts = 0
    closed = False
    while True:
        if data.startswith(b"--", position):
            closed = True
            break
        line_end = data.find(b"\n", position)
        if line_end < 0:
            break
        head_end, content_start = _head_end(data, line_end + 1)
        if head_end < 0:
            break
        if parts >= MAX_VALUES:
            body.anomalies.append((LIMITS, "body"))
            return
        parts += 1
        headers = _part_headers(data[line_end + 1:head_end])
        found = next_delimiter.search(data, content_start)
        content_end = found.start() if found else len(data)
        content = data[content_start:content_end]
        # Unreadable part headers count as none: the part is malformed and
        # its content is inspected as a nameless field.
        _part(body, headers or {}, content)
        if found is None:
            break
        position = found.end()
    if not closed and complete:
        body.anomalies.append((MALFORMED_MULTIPART, "body"))
    if parts == 0 and complete:
        body.text = text_of(data)


def _head_end(data: bytes, start: int) -> tuple[int, int]:
    """Where a part's headers end and its content starts (CRLF or bare LF lines)."""
    if data.startswith(b"\r\n", start):
        return start, start + 2
    if data.startswith(b"\n", start):
        return start, start + 1
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _part_headers(raw: bytes) -> dict[str, str] | None:
    """
    A part's headers by lower-case name, or L{None} when a line is not a
    header.  A line folded onto the next (obsolete, but some parsers unfold
    it) continues the header before it.
    """
    headers: dict[str, str] = {}
    last = None
    for line in text_of(raw).splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and last is not None:
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            return None
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


#: The character sets browsers send form parts in.
_PLAIN_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1",
                             "iso-8859-15", "windows-1252"})

#: Characters that have no business in a part's name or file name: they
#: make parsers that split the header naively disagree on the field.
_EVASIVE = re.compile(r'[;="\\\r\n\x00]')


def _part(body: Body, headers: dict[str, str], content: bytes) -> None:
    disposition = headers.get("content-disposition")
    if disposition is None:
        # No field name (or no readable headers), yet some parser takes the
        # part's content: inspected as a nameless field.
        body.anomalies.append((MALFORMED_MULTIPART, "body"))
        body.args.append(("", text_of(content[:FILE_CONTENT_LIMIT])))
        return
    _, params = split_content_type(disposition)
    if any(_EVASIVE.search(params.get(key) or "") for key in ("name", "filename")) \
            or disposition.lower().count("name=") > 2:
        body.anomalies.append((MULTIPART_EVASION, "body"))
    name = params.get("name")
    if name is None:
        body.anomalies.append((MALFORMED_MULTIPART, "body"))
        name = ""
    filename = params.get("filename")
    if filename is None and "filename*" in params:
        filename = percent_decode(params["filename*"].rpartition("'")[2])
    if filename is not None:
        body.names.append(name)
        body.files.append((name, filename))
        head = content[:FILE_CONTENT_LIMIT]
        if head:
            body.contents.append((name, text_of(head)))
    else:
        part_params = split_content_type(headers.get("content-type", ""))[1]
        charset = part_params.get("charset", "").lower()
        if charset and charset not in _PLAIN_CHARSETS:
            body.anomalies.append((MULTIPART_EVASION, "body"))
        body.args.append((name, _decoded(content, part_params)))


# -- no Content-Type -----------------------------------------------------------------------


def _sniffed(body: Body, data: bytes, complete: bool, params: dict[str, str]) -> None:
    """A body sent without a type: JSON or XML if it parses as such, else text."""
    first = data.lstrip()[:1]
    if first in (b"{", b"[") and _json_body(body, data, complete, declared=False):
        return
    if first == b"<" and _xml_body(body, data, complete, params, declared=False):
        return
    body.xml.clear()
    body.text = text_of(data)

