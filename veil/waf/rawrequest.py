"""
A raw HTTP/1.1 request (as bytes, from a file or a test corpus) as the WAF
would see it behind Veil's proxy: parsed with the proxy's parser (llhttp,
through httptools), refused where the proxy refuses it, and turned into a
L{veil.waf.request.Request}.

C{veil waf check} and the efficacy benchmark (C{bench/waf/}) read requests
this way, so that what they report is what the proxy would do.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import httptools

from veil.edge.plain import split_target
from veil.proxy.server import MAX_HEAD, MAX_HEADERS, MAX_URL
from veil.waf.policy import DEFAULT_INSPECT_BODY_LIMIT
from veil.waf.request import Request

#: At most this many content codings, and gzip members, are undone.
MAX_CODINGS = 4
MAX_MEMBERS = 64


class Refused(Exception):
    """The proxy would answer this request itself, with C{status}, before the WAF."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@attrs.define
class RawRequest:
    """The parts of a parsed request."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str

    def request(self, body_limit: int = DEFAULT_INSPECT_BODY_LIMIT) -> Request:
        """
        The WAF's view, with the body cut to C{body_limit} as the proxy holds
        it, and decompressed as the proxy does (see L{decompress}; a body it
        cannot decompress is left as it is).
        """
        body, complete = self.body[:body_limit], len(self.body) <= body_limit
        codings = content_codings(self.headers)
        if codings and body:
            decoded = decompress(body, codings, body_limit, complete)
            if decoded is not None:
                body, complete = decoded
        return Request(self.method, self.target, self.headers, body, complete=complete)


class _Collector:
    def __init__(self) -> None:
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_done = False
        self.done = False

    def on_url(self, part: bytes) -> None:
        self.url.append(part)
        self.size += len(part)
        if self.size > MAX_URL:
            raise Refused(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.size += len(name) + len(value) + 4
        if self.size > MAX_HEAD or len(self.headers) > MAX_HEADERS:
            raise Refused(431, "request head too large")

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


def parse(data: bytes, lenient: bool = False) -> RawRequest:
    """
    The request in C{data}; raises L{Refused} with the status the proxy
    would answer (400, 414, 431) when it would not reach the WAF.

    With C{lenient} (a request typed into a file by hand), bare LF line
    ends in the head are accepted and a body without C{Content-Length} is
    everything after the blank line.
    """
    if lenient:
        data = _tidy(data)
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(data)
    except Refused:
        raise
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        raise Refused(400, f"malformed request: {e}") from None
    if not collector.head_done:
        raise Refused(400, "incomplete request head")
    method = parser.get_method()
    version = parser.get_http_version()
    if version not in ("1.0", "1.1"):
        raise Refused(400 if version != "2.0" else 505, f"HTTP/{version}")
    hosts = [v for k, v in collector.headers if k.lower() == b"host"]
    lengths = [v for k, v in collector.headers if k.lower() == b"content-length"]
    encodings = [v for k, v in collector.headers if k.lower() == b"transfer-encoding"]
    if method == b"CONNECT" or len(hosts) != 1:
        raise Refused(400, "CONNECT, or not exactly one Host header")
    if sum(1 for k, _ in collector.headers if k.lower() == b"content-type") > 1:
        raise Refused(400, "more than one Content-Type header")
    if len(encodings) > 1 or (encodings and (encodings[0].strip().lower() != b"chunked"
                                             or lengths)):
        raise Refused(400, "ambiguous or unsupported Transfer-Encoding")
    split = split_target(b"".join(collector.url))
    if split is None:
        raise Refused(400, "request target is not origin- or absolute-form")
    return RawRequest(method, split[1], collector.headers, b"".join(collector.body), version)


def _tidy(data: bytes) -> bytes:
    """A hand-written request made parseable: CRLF line ends, a Content-Length."""
    if b"\r\n\r\n" in data:
        head, _, body = data.partition(b"\r\n\r\n")
    elif b"\n\n" in data:
        head, _, body = data.partition(b"\n\n")
    else:
        head, body = data.rstrip(b"\r\n"), b""
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    names = {line.partition(b":")[0].strip().lower() for line in lines[1:]}
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    if b"host" not in names:
        lines.insert(1, b"Host: localhost")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def content_codings(headers: Any) -> list[str]:
    """The content codings of a request's body, in the order applied (without C{identity})."""
    codings = []
    for name, value in headers:
        if len(name) == 16 and name.lower() == b"content-encoding":
            for token in value.decode("latin-1").split(","):
                token = token.strip().lower()
                if token and token != "identity":
                    codings.append(token)
    return codings


def decompress(data: bytes, codings: list[str], limit: int,
               complete: bool) -> tuple[bytes, bool] | None:
    """
    The start of a body with C{codings} undone, at most C{limit} bytes, and
    whether it is the whole body; L{None} when it cannot be read (a coding
    other than gzip and deflate, too many codings, a corrupt stream, or a
    whole body whose stream ends early).  The output is bounded whatever
    the input holds (a decompression bomb is read to C{limit} and no
    further).
    """
    if len(codings) > MAX_CODINGS:
        return None
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            wbits = 31
        elif coding == "deflate":
            # RFC 9110 says zlib; some clients send raw deflate.
            zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 \
                and (data[0] << 8 | data[1]) % 31 == 0
            wbits = 15 if zlib_header else -15
        else:
            return None
        out: list[bytes] = []
        size = 0
        rest = data
        ended = False
        for _ in range(MAX_MEMBERS):
            inflater = zlib.decompressobj(wbits)
            try:
                piece = inflater.decompress(rest, limit + 1 - size)
            except zlib.error:
                return None
            out.append(piece)
            size += len(piece)
            ended = inflater.eof
            rest = inflater.unused_data
            if size > limit or not ended or not rest:
                break
        else:
            return None  # more members than anyone sends
        data = b"".join(out)
        if size > limit:
            data, complete = data[:limit], False
        elif not ended and complete:
            return None  # the whole body, and its stream stops short
    return data, complete
