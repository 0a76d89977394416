"""
The request as the WAF inspects it: a lazy view over what the proxy has
parsed (method, raw target, header list, the body prefix).

Nothing is decoded or parsed until a rule reads it: a request without a
query and a body costs the construction of this object and the values the
loaded rules ask for.  Values are grouped in I{collections} named as in
L{veil.waf.policy} (C{args}, C{headers}, C{xml}, ...); L{Request.parts}
returns a collection's values with their target names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from veil.waf import bodies
from veil.waf.decoding import has_invalid_escape, normalise_path, text_of

Headers = Sequence[tuple[bytes, bytes]]

# The sources of values (L{Request.shape}).
HAS_QUERY = 1
HAS_BODY = 2
HAS_COOKIES = 4
#: The sources each collection's values come from; the others are always there.
SOURCES = {
    "args": HAS_QUERY | HAS_BODY,
    "args_names": HAS_QUERY | HAS_BODY,
    "cookies": HAS_COOKIES,
    "cookies_names": HAS_COOKIES,
    "body": HAS_BODY,
    "xml": HAS_BODY,
    "files": HAS_BODY,
    "file_content": HAS_BODY,
}


class Part:
    """
    Some of a collection's values and, for each, the target names it has:
    given (C{targets}), made on demand from a prefix and the members'
    names (C{prefix}, C{names}: C{"headers:"} and C{["accept", ...]}), or
    found by C{resolve}.
    """

    __slots__ = ("names", "prefix", "resolve", "targets", "values")

    def __init__(self, values: list[str], targets: list[str] | None,
                 resolve: Callable[[str], list[str]] | None = None, prefix: str = "",
                 names: list[str] | None = None) -> None:
        self.values = values
        #: One target name per value, or L{None} when C{names} or C{resolve} make them.
        self.targets = targets
        self.resolve = resolve
        self.prefix = prefix
        self.names = names

    def names_of(self, index: int) -> list[str]:
        """The target names of value C{index} (a JSON string can be at several paths)."""
        if self.targets is not None:
            return [self.targets[index]]
        if self.names is not None:
            return [self.prefix + self.names[index]]
        assert self.resolve is not None
        return self.resolve(self.values[index]) or ["args"]


#: Argument names that hold secrets: their values are masked in excerpts.
SECRET_WORDS = ("pass", "pwd", "secret", "token", "auth", "session", "sess", "key", "csrf",
                "xsrf", "otp", "pin", "cvv", "cvc", "card", "ssn", "signature", "code_verifier",
                "credential", "cookie", "jwt", "bearer", "nonce")


def is_secret_name(name: str) -> bool:
    """Whether a parameter or header called C{name} is likely to hold a secret."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


class Request:
    """
    One request's inspectable parts, computed on first use.

    C{method}, C{target} and C{headers} are as the proxy parsed them (bytes;
    header names in any case); C{body} is the start of the body the proxy
    held for inspection and C{complete} says whether it is all of it.
    """

    __slots__ = (
        "_anomalies",
        "_body",
        "_content_type",
        "_cookie_list",
        "_cookies",
        "_header_index",
        "_header_text",
        "_headers",
        "_media",
        "_method",
        "_parsed",
        "_path",
        "_query",
        "_query_args",
        "_target",
        "_uri",
        "complete",
    )

    def __init__(self, method: bytes, target: bytes, headers: Headers, body: bytes = b"",
                 complete: bool = True, content_type: bytes | None = None) -> None:
        self._method = method
        self._target = target
        self._headers = headers
        self._body = body
        self.complete = complete
        self._content_type = content_type
        self._uri: str | None = None
        self._header_text: list[tuple[str, str]] | None = None
        self._header_index: dict[str, list[str]] | None = None
        self._query: str | None = None
        self._path: str | None = None
        self._query_args: list[tuple[str, str]] | None = None
        self._parsed: bodies.Body | None = None
        self._cookies: _CookieHeader | None = None
        self._cookie_list: list[tuple[str, str]] | None = None
        self._anomalies: list[tuple[str, str]] | None = None
        self._media: tuple[str, dict[str, str]] | None = None

    @property
    def bodiless(self) -> bool:
        """No body at all (a request whose body is not read is not bodiless)."""
        return not self._body and self.complete

    def key(self, paranoia: int) -> tuple:
        """The request as received (without its body), with a paranoia level: a memo key."""
        return (paranoia, self._method, self._target, self._content_type, tuple(self._headers))

    # -- the request line ----------------------------------------------------------------

    @property
    def method(self) -> str:
        return self._method.decode("latin-1")

    @property
    def uri(self) -> str:
        """The request target as received."""
        uri = self._uri
        if uri is None:
            uri = self._uri = text_of(self._target)
        return uri

    @property
    def raw_path(self) -> str:
        return self.uri.partition("?")[0]

    @property
    def query(self) -> str:
        """The raw query string (after the first C{?}), or empty."""
        if self._query is None:
            self._query = self.uri.partition("?")[2]
        return self._query

    @property
    def path(self) -> str:
        """The normalised path (see L{veil.waf.decoding.normalise_path})."""
        if self._path is None:
            self._path = normalise_path(self.raw_path)
        return self._path

    @property
    def body(self) -> bytes:
        return self._body

    # -- headers and cookies -------------------------------------------------------------

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The headers as text, names in lower case, in the order received."""
        found = self._header_text
        if found is None:
            known = _HEADER_NAMES
            try:
                found = [(known.get(name) or _header_name(name), value.decode())
                         for name, value in self._headers]
            except UnicodeDecodeError:
                found = [(known.get(name) or _header_name(name), text_of(value))
                         for name, value in self._headers]
            self._header_text = found
        return found

    @property
    def header_names(self) -> list[str]:
        """The names of the headers (lower case, in the order received, repeated as received)."""
        return [name for name, _ in self.headers]

    @property
    def header_index(self) -> dict[str, list[str]]:
        """The header values by lower-cased name."""
        if self._header_index is None:
            index: dict[str, list[str]] = {}
            for key, value in self.headers:
                index.setdefault(key, []).append(value)
            self._header_index = index
        return self._header_index

    def header(self, name: str) -> str | None:
        """The first value of header C{name} (lower case), or L{None}."""
        values = self.header_index.get(name)
        return values[0] if values else None

    @property
    def cookies(self) -> list[tuple[str, str]]:
        """The cookies (name, value) of every C{Cookie} header, in order (a list of the request's own)."""
        found = self._cookie_list
        if found is None:
            found = self._cookie_list = list(self.cookie_header.pairs)
        return found

    @property
    def cookie_header(self) -> _CookieHeader:
        """
        The C{Cookie} headers, parsed (a client sends the same one again and
        again: it is looked up, not parsed, see L{_COOKIES}).
        """
        found = self._cookies
        if found is None:
            values = [value for key, value in self.headers if key == "cookie"]
            if len(values) == 1:
                found = _COOKIES.get(values[0]) or _cookie_header(values[0])
            else:
                found = _CookieHeader([pair for value in values for pair in
                                       (_COOKIES.get(value) or _cookie_header(value)).pairs])
            self._cookies = found
        return found

    # -- arguments and the body ----------------------------------------------------------

    @property
    def query_args(self) -> list[tuple[str, str]]:
        if self._query_args is None:
            args: list[tuple[str, str]] = []
            query = self.query
            if query:
                bodies.parse_pairs(query, args)
            self._query_args = args
        return self._query_args

    @property
    def media_type(self) -> tuple[str, dict[str, str]]:
        """The body's media type (lower case, empty when none is sent) and its parameters."""
        if self._media is None:
            raw = self._content_type
            if raw is None:
                for name, value in self._headers:
                    if len(name) == 12 and name.lower() == b"content-type":
                        raw = value
                        break
            self._media = bodies.split_content_type(raw.decode("latin-1")) if raw else ("", {})
        return self._media

    @property
    def parsed_body(self) -> bodies.Body:
        """The body's values (parsed on first use)."""
        if self._parsed is None:
            media, params = self.media_type
            self._parsed = bodies.parse_body(self._body, self.complete, media, params)
        return self._parsed

    @property
    def args(self) -> list[tuple[str, str]]:
        """Named arguments from the query, a form and multipart fields (not JSON)."""
        return self.query_args + self.parsed_body.args

    @property
    def anomalies(self) -> list[tuple[str, str]]:
        """Parse anomalies: (kind, target) pairs, kinds as in L{veil.waf.bodies.ANOMALIES}."""
        if self._anomalies is None:
            found = []
            query = self.query
            if query:
                if has_invalid_escape(query):
                    found.append((bodies.BAD_URLENCODING, "uri"))
                if len(self.query_args) >= bodies.MAX_VALUES:
                    found.append((bodies.LIMITS, "uri"))
            if self._body:
                found += self.parsed_body.anomalies
            self._anomalies = found
        return self._anomalies

    # -- collections ---------------------------------------------------------------------

    @property
    def shape(self) -> int:
        """
        Which sources of values the request has (L{HAS_QUERY}, L{HAS_BODY},
        L{HAS_COOKIES}): a collection whose source is missing is empty.
        """
        shape = HAS_QUERY if b"?" in self._target else 0
        if self._body:
            shape |= HAS_BODY
        for name, _ in self.headers:
            if name == "cookie":
                return shape | HAS_COOKIES
        return shape

    def parts(self, collection: str, names: frozenset[str] | None = None) -> list[Part]:
        """
        The values of C{collection} with their target names; with C{names},
        only the members of that name (C{headers} and C{cookies} only).
        """
        return COLLECTIONS[collection](self, names)


#: Header names as received -> lower-cased text (bounded: names are the client's choice).
_HEADER_NAMES: dict[bytes, str] = {}


class _CookieHeader:
    """The cookies of C{Cookie} headers: their pairs, and the values and names the engine reads."""

    __slots__ = ("names", "pairs", "values")

    def __init__(self, pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> None:
        self.pairs = tuple(pairs)
        self.values = tuple(v for _, v in pairs if v)
        self.names = tuple(k for k, _ in pairs if k)


#: Cookie header values -> their cookies (bounded: a client's cookies
#: come back with each of its requests, and are parsed once).
_COOKIES: dict[str, _CookieHeader] = {}
#: Cookie headers longer than this are parsed each time they come.
_COOKIE_CHARS = 4096


def _cookie_header(value: str) -> _CookieHeader:
    cookies = []
    for item in value.split(";"):
        name, _, content = item.partition("=")
        name = name.strip()
        if name or content:
            cookies.append((name, content.strip()))
    found = _CookieHeader(tuple(cookies))
    if len(value) <= _COOKIE_CHARS:
        if len(_COOKIES) >= 1024:
            _COOKIES.clear()
        _COOKIES[value] = found
    return found


def _header_name(raw: bytes) -> str:
    name = raw.decode("latin-1").lower()
    if len(_HEADER_NAMES) >= 1024:
        _HEADER_NAMES.clear()
    _HEADER_NAMES[raw] = name
    return name


def _pairs_part(collection: str, pairs: list[tuple[str, str]],
                names: frozenset[str] | None) -> Part:
    if names is not None:
        pairs = [(k, v) for k, v in pairs if k in names]
    return Part([v for _, v in pairs if v], None, prefix=collection + ":",
                names=[k for k, v in pairs if v])


def _method(request: Request, names: frozenset[str] | None) -> list[Part]:
    return [Part([request.method], ["method"])]


def _uri(request: Request, names: frozenset[str] | None) -> list[Part]:
    return [Part([request.uri], ["uri"])]


def _path(request: Request, names: frozenset[str] | None) -> list[Part]:
    return [Part([request.path], ["path"])]


def _args(request: Request, names: frozenset[str] | None) -> list[Part]:
    parts = []
    query = request.query_args
    if query:
        parts.append(_pairs_part("args", query, names))
    if request.body:
        body = request.parsed_body
        if body.args:
            parts.append(_pairs_part("args", body.args, names))
        if body.json_values and names is None:
            parts.append(Part(body.json_values, None,
                              lambda value: ["args:" + p for p in body.json_paths(value)]))
    return parts


def _args_names(request: Request, names: frozenset[str] | None) -> list[Part]:
    found = _args_names_values(request, names)
    return [Part(found, ["args_names"] * len(found))] if found else []


def _headers(request: Request, names: frozenset[str] | None) -> list[Part]:
    if names is None:
        pairs = [(k, v) for k, v in request.headers if k != "cookie"]
    else:
        index = request.header_index
        pairs = [(k, v) for k in names if k in index for v in index[k]]
    if not pairs:
        return []
    return [Part([v for _, v in pairs], None, prefix="headers:", names=[k for k, _ in pairs])]


def _cookies(request: Request, names: frozenset[str] | None) -> list[Part]:
    cookies = request.cookies
    return [_pairs_part("cookies", cookies, names)] if cookies else []


def _cookies_names(request: Request, names: frozenset[str] | None) -> list[Part]:
    found = [k for k, _ in request.cookies if k]
    return [Part(found, ["cookies_names"] * len(found))] if found else []


def _xml(request: Request, names: frozenset[str] | None) -> list[Part]:
    if not request.body or not request.parsed_body.xml:
        return []
    return [_pairs_part("xml", request.parsed_body.xml, names)]


def _files(request: Request, names: frozenset[str] | None) -> list[Part]:
    if not request.body or not request.parsed_body.files:
        return []
    return [_pairs_part("files", request.parsed_body.files, names)]


def _file_content(request: Request, names: frozenset[str] | None) -> list[Part]:
    if not request.body or not request.parsed_body.contents:
        return []
    return [_pairs_part("file_content", request.parsed_body.contents, names)]


def _body(request: Request, names: frozenset[str] | None) -> list[Part]:
    if not request.body:
        return []
    text = request.parsed_body.text
    return [Part([text], ["body"])] if text else []


#: Each collection's values (the names given: only those members).
COLLECTIONS: dict[str, Callable[[Request, frozenset[str] | None], list[Part]]] = {
    "method": _method,
    "uri": _uri,
    "path": _path,
    "args": _args,
    "args_names": _args_names,
    "headers": _headers,
    "cookies": _cookies,
    "cookies_names": _cookies_names,
    "xml": _xml,
    "files": _files,
    "file_content": _file_content,
    "body": _body,
}



# -- values alone ----------------------------------------------------------------------------
#
# The values of a collection without their names, in the order of its parts:
# what the engine looks up for every request (the names are made only for
# the values that matched).


def _pairs_values(pairs: list[tuple[str, str]], names: frozenset[str] | None) -> list[str]:
    if names is None:
        return [v for _, v in pairs if v]
    return [v for k, v in pairs if v and k in names]


def _method_values(request: Request, names: frozenset[str] | None) -> list[str]:
    return [request.method]


def _uri_values(request: Request, names: frozenset[str] | None) -> list[str]:
    return [request.uri]


def _path_values(request: Request, names: frozenset[str] | None) -> list[str]:
    return [request.path]


def _args_values(request: Request, names: frozenset[str] | None) -> list[str]:
    found = _pairs_values(request.query_args, names)
    if request.body:
        body = request.parsed_body
        if body.args:
            found += _pairs_values(body.args, names)
        if body.json_values and names is None:
            found += body.json_values
    return found


def _headers_values(request: Request, names: frozenset[str] | None) -> list[str]:
    if names is None:
        return [v for k, v in request.headers if k != "cookie"]
    return [v for k, v in request.headers if k in names]


def _cookies_values(request: Request, names: frozenset[str] | None) -> Sequence[str]:
    if names is None:
        return request.cookie_header.values
    return _pairs_values(request.cookies, names)


def _cookies_names_values(request: Request, names: frozenset[str] | None) -> Sequence[str]:
    return request.cookie_header.names


def _args_names_values(request: Request, names: frozenset[str] | None) -> list[str]:
    found = [k for k, _ in request.query_args if k]
    if request.body:
        body = request.parsed_body
        if body.args:
            found += [k for k, _ in body.args if k]
        if body.names:
            found += filter(None, body.names)
    return found


def _from_parts(collection: str) -> Callable[[Request, frozenset[str] | None], list[str]]:
    function = COLLECTIONS[collection]

    def values(request: Request, names: frozenset[str] | None) -> list[str]:
        return [v for part in function(request, names) for v in part.values]

    return values


#: Each collection's values alone, in the order of its parts' values.
VALUES: dict[str, Callable[[Request, frozenset[str] | None], Sequence[str]]] = {
    "method": _method_values,
    "uri": _uri_values,
    "path": _path_values,
    "args": _args_values,
    "headers": _headers_values,
    "cookies": _cookies_values,
    "cookies_names": _cookies_names_values,
    "args_names": _args_names_values,
    **{c: _from_parts(c) for c in ("xml", "files", "file_content", "body")},
}
