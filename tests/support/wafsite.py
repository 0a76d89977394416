"""
A running Veil with sites in front of a recording origin, for the WAF's
end-to-end tests: real VeilServices (their WAF engine compiled at start-up)
on a real PostgreSQL, the operator's CLI, real TLS clients and an origin of
the tests' own that records every request it receives (head, body length,
SHA-256 and start of the body).
"""

from __future__ import annotations

import hashlib
import io
import socket
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, _Reader
from tests.support.origin import OriginFactory, OriginProtocol, client_threads
from tests.support.postgres import fresh_database
from tests.support.waiting import until
from veil import cli
from veil.config import load
from veil.service import VeilService

#: Bytes of each request body the origin keeps (all of it is hashed).
KEPT = 64 * 1024

#: The issue's four attacks, as curl sends them (a space in a URL is
#: percent-encoded by every client; curl refuses a raw one).
ATTACKS = (
    ("/?id=1%27%20OR%201=1--", {}),
    ("/?q=<script>alert(1)</script>", {}),
    ("/?cmd=;cat%20/etc/passwd", {}),
    ("/", {"User-Agent": "${jndi:ldap://x/a}"}),
)
#: Their attack classes, in the same order.
ATTACK_TYPES = ("sqli", "xss", "rce", "java")


@attrs.frozen
class Received:
    """One request as the origin received it."""

    method: bytes
    target: bytes
    headers: list[list[str]]
    length: int
    sha256: str
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


class _RecordingProtocol(OriginProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.digest = hashlib.sha256()
        self.kept = bytearray()

    def on_body(self, data: bytes) -> None:
        super().on_body(data)
        self.digest.update(data)
        if len(self.kept) < KEPT:
            self.kept += data[:KEPT - len(self.kept)]

    def on_message_complete(self) -> None:
        self.f.received.append(Received(self.parser.get_method(), self.url, self.headers,
                                        self.body_len, self.digest.hexdigest(),
                                        bytes(self.kept)))
        super().on_message_complete()


class RecordingOrigin(OriginFactory):
    """The test origin (L{OriginFactory}'s endpoints), recording every request."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.received: list[Received] = []

    def buildProtocol(self, addr: Any) -> OriginProtocol:
        return _RecordingProtocol(self)


def listen_recording_origin(testcase: TestCase) -> tuple[RecordingOrigin, str]:
    origin = RecordingOrigin(reactor)
    port = reactor.listenTCP(0, origin, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    testcase.addCleanup(origin.cancel)
    return origin, f"http://127.0.0.1:{port.getHost().port}"


def execute(conninfo: str, statement: str, params: tuple = ()) -> list[tuple]:
    """One statement in its own committed transaction, as another process would run it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def get(target: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = {"User-Agent": "curl/8.5.0", "Accept": "*/*", **(headers or {})}
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n").encode()


def post(target: str, host: str, content_type: str | None, body: bytes,
         chunked: bool = False, headers: dict[str, str] | None = None) -> bytes:
    lines = {"User-Agent": "curl/8.5.0", "Accept": "*/*", **(headers or {})}
    if content_type is not None:
        lines["Content-Type"] = content_type
    if chunked:
        lines["Transfer-Encoding"] = "chunked"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    else:
        lines["Content-Length"] = str(len(body))
    return (f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n").encode() + body


def request_id(response: Response) -> str:
    value = response.header(b"x-request-id")
    assert value is not None, "no X-Request-Id"
    return value.decode()


def exchange(port: int, data: bytes, wrap: Callable[[socket.socket], socket.socket] | None,
             pieces: Iterable[bytes] = (), keep_body: bool = True,
             timeout: float = 30.0) -> Response:
    """
    One request on a new connection (C{data}, then C{pieces} as they come):
    the response, read to its end or to the close (what was read of it;
    without C{keep_body}, only its size).  The server may answer and close
    before taking everything (413, 403).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if wrap is not None:
        s = wrap(s)
    reader = _Reader(keep_body)
    try:
        try:
            s.sendall(data)
            for piece in pieces:
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # answered early; read the answer
        while not (reader.responses and reader.responses[-1].done):
            try:
                chunk = s.recv(262144)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            reader.parser.feed_data(chunk)
    finally:
        s.close()
    assert reader.responses, "no response"
    return reader.responses[-1]


@attrs.define
class WafVeil:
    """
    Running Veils (one or more VeilServices on one database) and the means
    to drive them: the CLI, clients over TLS and plain HTTP, the request log.
    """

    testcase: TestCase
    conninfo: str
    veils: list[VeilService]
    threads: Any
    cafile: str

    @property
    def veil(self) -> VeilService:
        return self.veils[0]

    def port(self, name: str = "edge", index: int = 0) -> int:
        return self.veils[index].edge.ports[name].getHost().port

    async def cli(self, *argv: str, status: int = 0, env: dict[str, str] | None = None) -> str:
        """Run C{veil ARGV} against the database; check its exit status; its output."""
        out, err = io.StringIO(), io.StringIO()
        environ = {"VEIL_DATABASE_URL": self.conninfo, **(env or {})}
        code = await cli.run(reactor, list(argv), environ=environ, out=out, err=err)
        self.testcase.assertEqual(code, status, out.getvalue() + err.getvalue())
        return out.getvalue() + err.getvalue()

    async def add_site(self, domain: str, upstream: str, *options: str) -> None:
        """Add a verified site with the CLI, and wait until every Veil serves it."""
        await self.cli("sites", "add", domain, "--origin", upstream, "--verified", *options)
        await until(lambda: all(v.edge.sites.get(domain) is not None for v in self.veils),
                    10.0, f"{domain} in every site table")

    def send(self, data: bytes, host: str, pieces: Iterable[bytes] = (), index: int = 0,
             tls: bool = True, keep_body: bool = True) -> Deferred[Response]:
        """A request to Veil C{index}, over TLS with SNI C{host} (or plain HTTP)."""
        wrap = None
        port = self.port("edge" if tls else "http", index)
        if tls:
            context = ssl.create_default_context(cafile=self.cafile)

            def wrap(raw: socket.socket) -> socket.socket:
                return context.wrap_socket(raw, server_hostname=host)
        return deferToThreadPool(reactor, self.threads, exchange, port, data, wrap, pieces,
                                 keep_body)

    def rows(self, where: str = "true", params: tuple = ()) -> list[dict[str, Any]]:
        """The request log's rows, oldest first, as dicts."""
        with psycopg.connect(self.conninfo) as conn:
            cur = conn.execute(
                "SELECT request_id, host, path, query, status, bytes_in, classification,"
                " classifier, confidence, attack_type, blocked, rule_ids, anomaly_score, excerpt"
                f" FROM request_log WHERE {where} ORDER BY id", params)
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    async def logged(self, request_ids: list[str]) -> list[dict[str, Any]]:
        """The rows of these requests, once all are written, in the order given."""
        def written() -> bool:
            return len(self.rows("request_id = ANY(%s)", (request_ids,))) >= len(request_ids)
        await until(written, 20.0, f"{len(request_ids)} request_log rows")
        rows = {r["request_id"]: r for r in self.rows("request_id = ANY(%s)", (request_ids,))}
        return [rows[i] for i in request_ids]


async def start_wafveil(testcase: TestCase, count: int = 1, **env: str) -> WafVeil:
    """C{count} running Veils on one fresh database (WAF on unless C{env} says otherwise)."""
    conninfo = fresh_database(testcase)
    veils = []
    for _ in range(count):
        environ = {"VEIL_DATABASE_URL": conninfo, "VEIL_DASHBOARD_PORT": "0",
                   "VEIL_EDGE_PORT": "0", "VEIL_HTTP_PORT": "0",
                   "VEIL_DATA_DIR": str(Path(testcase.mktemp()).resolve()), **env}
        service = VeilService(load(None, environ), reactor, lambda status: None)
        service.privilegedStartService()
        service.startService()
        testcase.addCleanup(service.stopService)
        phase = await service.readiness.settled()
        testcase.assertEqual(phase, "running", service.readiness.detail)
        veils.append(service)
    ca = veils[0].edge.ca
    return WafVeil(testcase, conninfo, veils, client_threads(testcase, "test-waf-clients", 8),
                   str(ca.root_path))
