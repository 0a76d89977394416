"""
The dashboard inside a whole Veil (L{veil.service.VeilService}): the
first-run link in the log, the operational endpoints beside the app, and
the dashboard served on the edge over TLS for C{dashboard.host}, with
HSTS and C{__Host-} cookies.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import psycopg
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_edge import ClientThreads, start_veil
from tests.support.dashboard import PASSWORD, Browser
from tests.support.postgres import fresh_database
from veil.auth.passwords import hash_now


def tls_request(port: int, name: str, cafile: str, method: str, path: str,
                headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 request over TLS to 127.0.0.1 for C{name} (blocking: run it on a thread)."""
    context = ssl.create_default_context(cafile=cafile)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {name}", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return int(status_line.split()[1]), parsed, rest


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


class FirstRunTests(TestCase):
    """Start-up writes the one-time setup link to the log when no account exists."""

    timeout = 120

    async def test_link_in_log(self) -> None:
        """With no account the log carries /setup?token=..., and the link works."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        veil = await start_veil(self, fresh_database(self))
        texts = [formatEvent(e) for e in events]
        links = [m for t in texts for m in re.findall(r"http://[^ ]+/setup\?token=[\w-]+", t)]
        self.assertEqual(len(links), 1)
        base = f"http://127.0.0.1:{veil.dashboard_port.getHost().port}"
        self.assertTrue(links[0].startswith(base + "/setup?token="), links[0])
        page = await Browser(base).get(links[0][len(base):])
        self.assertEqual(page.code, 200)
        self.assertIn("Create the first administrator", page.text)

    async def test_no_link_with_accounts(self) -> None:
        """With an account, no link is written."""
        conninfo = fresh_database(self)
        with psycopg.connect(conninfo) as conn:
            conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, %s)",
                         ("someone@example.com", hash_now(PASSWORD)))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await start_veil(self, conninfo)
        self.assertFalse(any("/setup?token=" in formatEvent(e) for e in events))

    async def test_operational_endpoints_beside(self) -> None:
        """/health, /ready and /metrics still answer, with the security headers."""
        veil = await start_veil(self, fresh_database(self))
        browser = Browser(f"http://127.0.0.1:{veil.dashboard_port.getHost().port}")
        for path in ("/health", "/ready", "/metrics"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 200, path)
            self.assertEqual(reply.header("x-content-type-options"), "nosniff")
            self.assertIn("frame-ancestors 'none'", reply.header("content-security-policy"))
            self.assertRegex(reply.header("x-request-id"), r"^[0-9a-f]{32}$")
        health = (await browser.api("GET", "/health")).json()
        self.assertIn("auth-cleanup", health["workers"])
        self.assertIn("api-token-uses", health["workers"])
        self.assertEqual((await browser.get("/")).code, 303)


class EdgeTests(TestCase):
    """The dashboard on the edge for dashboard.host, over TLS."""

    timeout = 120

    async def test_tls(self) -> None:
        """
        Over TLS every response has HSTS; cookies are __Host- and Secure; a
        password sign-in works; an oversized body is refused with 413.
        """
        conninfo = fresh_database(self)
        with psycopg.connect(conninfo) as conn:
            conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, %s)",
                         ("edge@example.com", hash_now(PASSWORD)))
        veil = await start_veil(self, conninfo, VEIL_DASHBOARD_HOST="dash.test")
        port = veil.edge.ports["edge"].getHost().port
        cafile = str(Path(veil.config.data_dir) / "ca" / "ca.crt")
        threads = ClientThreads(self)
        status, headers, body = await threads(tls_request, port, "dash.test", cafile, "GET",
                                              "/login")
        self.assertEqual(status, 200)
        self.assertEqual(header(headers, "strict-transport-security"),
                         ["max-age=31536000; includeSubDomains"])
        [pre] = header(headers, "set-cookie")
        self.assertTrue(pre.startswith("__Host-veil_pre="))
        self.assertIn("Secure", pre)
        self.assertIn("Path=/", pre)
        pre_value = pre.split(";")[0].split("=", 1)[1]
        token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
        form = (f"email=edge%40example.com&password={PASSWORD.replace(' ', '+')}"
                f"&csrf_token={token}").encode()
        status, headers, _ = await threads(
            tls_request, port, "dash.test", cafile, "POST", "/login",
            {"Content-Type": "application/x-www-form-urlencoded",
             "Cookie": f"__Host-veil_pre={pre_value}", "Origin": "https://dash.test",
             "Sec-Fetch-Site": "same-origin"}, form)
        self.assertEqual(status, 303)
        session = [c for c in header(headers, "set-cookie") if c.startswith("__Host-veil_session=")]
        self.assertEqual(len(session), 1)
        self.assertIn("Secure", session[0])
        self.assertIn("HttpOnly", session[0])
        cookie = session[0].split(";")[0]
        status, headers, body = await threads(tls_request, port, "dash.test", cafile, "GET",
                                              "/api/v1/me", {"Cookie": cookie})
        self.assertEqual(status, 200, body)
        self.assertIn(b"edge@example.com", body)
        # The plain cookie name means nothing over TLS.
        plain = cookie.replace("__Host-veil_session", "veil_session")
        status, _, _ = await threads(tls_request, port, "dash.test", cafile, "GET",
                                     "/api/v1/me", {"Cookie": plain})
        self.assertEqual(status, 401)
        status, _, _ = await threads(tls_request, port, "dash.test", cafile, "POST", "/login",
                                     {"Content-Type": "application/x-www-form-urlencoded"},
                                     b"x" * (2 << 20))
        self.assertEqual(status, 413)
