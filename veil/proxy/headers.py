"""
Header rewriting for the proxy: hop-by-hop removal, forwarding headers,
request ids, and heads written as one C{bytes}.

Every function here runs once per request on the hot path, so each makes
one pass over the headers and joins one list.  Header names are compared
lower-cased; values are passed through as the client or origin sent them
(llhttp has already refused control characters and obsolete folding).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
#: C{Upgrade} is put back explicitly for an upgrade request.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})

#: Request headers Veil sets itself: the client's values are dropped
#: (C{X-Forwarded-For} is appended to instead, see L{request_head}).
_SET_BY_PROXY = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                           b"x-forwarded-for", b"x-request-id", b"content-length"})

#: Response headers Veil sets itself.
_SET_ON_RESPONSE = frozenset({b"content-length", b"x-request-id"})

Headers = list[tuple[bytes, bytes]]


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-cased option names listed in C{Connection} header values."""
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


_single_tokens: dict[bytes, frozenset[bytes]] = {}


def _tokens_of(value: bytes) -> frozenset[bytes]:
    """L{connection_tokens} of one value, remembered (origins repeat theirs)."""
    tokens = _single_tokens.get(value)
    if tokens is None:
        tokens = connection_tokens((value,))
        if len(value) <= 128:
            if len(_single_tokens) >= 1024:
                _single_tokens.clear()
            _single_tokens[value] = tokens
    return tokens


#: Response header name as sent -> (lower-cased, dropped whatever the
#: Connection header says); names repeat, so each is looked at once.
_response_names: dict[bytes, tuple[bytes, bool]] = {}


def _response_name(name: bytes) -> tuple[bytes, bool]:
    lower = name.lower()
    known = (lower, lower in HOP_BY_HOP or lower in _SET_ON_RESPONSE)
    if len(name) <= 64:
        if len(_response_names) >= 4096:
            _response_names.clear()
        _response_names[name] = known
    return known


class RequestIds:
    """
    Unique request ids, cheaper than C{uuid4}: a random per-process
    prefix (64 bits) and a counter, 32 hex digits in all.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        # The counter runs from 2**64 up: hex() then writes its 16 digits
        # with a leading "0x1" to cut, cheaper than a zero-padded format.
        self._next = 1 << 64

    def __call__(self) -> str:
        self._next = n = self._next + 1
        return self._prefix + hex(n)[3:]


#: What L{classify} says of a request header, for the proxy's checks.
OTHER, HOST, CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, USER_AGENT, UPGRADE, \
    REQUEST_ID, VIA, EXPECT, CONTENT_TYPE = range(11)
_KINDS = {b"host": HOST, b"content-length": CONTENT_LENGTH,
          b"transfer-encoding": TRANSFER_ENCODING, b"connection": CONNECTION,
          b"user-agent": USER_AGENT, b"upgrade": UPGRADE, b"x-request-id": REQUEST_ID,
          b"via": VIA, b"expect": EXPECT, b"content-type": CONTENT_TYPE}

#: And for forwarding: kept, dropped, or appended to (X-Forwarded-For).
KEEP, DROP, APPEND = 0, 1, 2

#: Request header name as sent -> its kind; and -> what forwarding does.
#: Names repeat, so each is looked at once (at most 4,096 kept).
request_kinds: dict[bytes, int] = {}
_forwarding: dict[bytes, int] = {}


def classify(name: bytes) -> int:
    """The kind of a request header (see L{classify_both})."""
    return classify_both(name)[0]


def classify_both(name: bytes) -> tuple[int, int]:
    """
    The kind of a request header (L{HOST}, ..., L{OTHER}), remembered with
    what forwarding does with it: hop-by-hop headers, those Veil sets,
    C{Forwarded} (RFC 7239, which a client could fill with anything) and
    any name with an underscore (which some servers read as the dash
    version, e.g. C{X_Forwarded_For}, as nginx's default does) are dropped.
    """
    lower = name.lower()
    kind = _KINDS.get(lower, OTHER)
    if lower == b"x-forwarded-for":
        forwarding = APPEND
    elif (lower in HOP_BY_HOP or lower in _SET_BY_PROXY or lower == b"host"
          or lower == b"forwarded" or b"_" in lower):
        forwarding = DROP
    else:
        forwarding = KEEP
    if len(name) <= 64:
        if len(request_kinds) >= 4096:
            request_kinds.clear()
            _forwarding.clear()
        request_kinds[name] = kind
        _forwarding[name] = forwarding
    return kind, forwarding


def request_head(method: bytes, target: bytes, headers: Headers, named: frozenset[bytes],
                 *, client_ip: bytes, proto: bytes, host: bytes, request_id: bytes,
                 body: bytes, upgrade: bytes | None, via: bytes = b"") -> bytes:
    """
    The head of the request to the origin.

    @param headers: the client's headers, as received.
    @param named: options the client's C{Connection} header names (dropped).
    @param host: the C{Host} value to send: the client's as it was sent, or
        the authority of an absolute-form target.
    @param body: the framing header line for the body (C{b""} for none),
        e.g. C{b"Content-Length: 12\\r\\n"}.
    @param upgrade: the C{Upgrade} value to pass on, or L{None}.
    @param via: Veil's own C{Via} line (after the client's, if any).
    """
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    forwarded_for = None
    forwarding = _forwarding
    for name, value in headers:
        what = forwarding.get(name)
        if what is None:
            what = classify_both(name)[1]
        if what:
            if what == APPEND:
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            continue
        if named and name.lower() in named:
            continue
        out += (name, b": ", value, b"\r\n")
    out += (b"X-Forwarded-For: ",
            client_ip if forwarded_for is None else forwarded_for + b", " + client_ip,
            b"\r\nX-Forwarded-Proto: ", proto, b"\r\nX-Forwarded-Host: ", host,
            b"\r\nX-Real-IP: ", client_ip, b"\r\nX-Request-Id: ", request_id, b"\r\n", via,
            body)
    if upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_head(status: int, reason: bytes, headers: Headers, *, request_id: bytes,
                  framing: bytes, upgrade: bool = False) -> bytes:
    """
    The head of the response to the client.

    @param framing: the framing and connection lines to add, e.g.
        C{b"Content-Length: 5\\r\\n"} or C{b"Transfer-Encoding: chunked\\r\\n"},
        plus C{b"Connection: close\\r\\n"} when the connection ends.
    @param upgrade: keep the origin's C{Upgrade} (a 101 answer).
    """
    out = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    names = _response_names
    named: frozenset[bytes] = frozenset()
    for name, value in headers:
        known = names.get(name)
        lower, dropped = known if known is not None else _response_name(name)
        if dropped:
            if lower == b"connection":
                named = _tokens_of(value)
            elif upgrade and lower == b"upgrade":
                out += (b"Connection: upgrade\r\nUpgrade: ", value, b"\r\n")
            continue
        out += (name, b": ", value, b"\r\n")
    if named - HOP_BY_HOP:
        # Connection names other headers (rare: origins say keep-alive or
        # close): drop those too, wherever they were.
        return _named_dropped(status, reason, headers, named, request_id, framing, upgrade)
    out += (b"X-Request-Id: ", request_id, b"\r\n", framing, b"\r\n")
    return b"".join(out)


def _named_dropped(status: int, reason: bytes, headers: Headers, named: frozenset[bytes],
                   request_id: bytes, framing: bytes, upgrade: bool) -> bytes:
    out = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _SET_ON_RESPONSE or lower in named:
            if upgrade and lower == b"upgrade":
                out += (b"Connection: upgrade\r\nUpgrade: ", value, b"\r\n")
            continue
        out += (name, b": ", value, b"\r\n")
    out += (b"X-Request-Id: ", request_id, b"\r\n", framing, b"\r\n")
    return b"".join(out)
