"""
The real dashboard over real HTTP on loopback, for integration tests.

L{start_dashboard} builds what L{veil.service.VeilService} builds for the
dashboard (the same L{Accounts}, L{Dashboard} and handler groups) on a
fresh clone of the migrated template database, listening on
C{127.0.0.1:0}, with a clock the test moves (L{TestClock}).  L{Browser} is
an HTTP client with a cookie jar that never follows redirects, and finds
the CSRF token in the pages it reads, as a browser's form would send it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from tests.support.postgres import fresh_database
from veil.auth.accounts import Accounts
from veil.auth.runtime import make_accounts
from veil.auth.store import User
from veil.config import Config, load
from veil.dashboard.dashboard import Dashboard, dashboard_site
from veil.dashboard.explain import Explainer
from veil.dashboard.handlers import NAV, groups
from veil.dashboard.live import LiveMount
from veil.dashboard.services import Services
from veil.live.hub import Hub
from veil.store.admin import OperatorAccount, SiteAdmin
from veil.store.db import Database
from veil.store.listener import ListenerService
from veil.workers.dns import DnsVerifier

#: A password that passes the rules.
PASSWORD = "correct horse battery staple"


class TestClock:
    """Real time plus an offset the test adds to (L{advance})."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@attrs.define(eq=False)
class Running:
    """A dashboard serving on loopback, and its parts."""

    config: Config
    db: Database
    accounts: Accounts
    dashboard: Dashboard
    clock: TestClock
    port: Any
    conninfo: str
    hub: Hub
    live: LiveMount
    listener: ListenerService | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def browser(self) -> Browser:
        return Browser(self.base)

    async def user(self, email: str, password: str | None = PASSWORD, admin: bool = False) -> User:
        hashed = None if password is None else await self.accounts.hasher.hash(password)
        return await self.accounts.store.create_user(email, hashed, admin, None)

    async def site(self, owner: User, domain: str) -> UUID:
        record = await SiteAdmin(self.db).add(domain, "http://127.0.0.1:9", owner.id)
        return record.id

    async def add_member(self, site_id: UUID, user: User, role: str) -> None:
        await self.db.query("test.member", "INSERT INTO site_members (site_id, user_id, role)"
                            " VALUES (%s, %s, %s)", (site_id, user.id, role))

    async def operator(self) -> UUID:
        return await OperatorAccount(self.db).ensure()

    async def audit(self, action: str) -> list[tuple]:
        """The audit rows of C{action}: (actor, target_id, detail, ip)."""
        return await self.db.query(
            "test.audit", "SELECT actor_user_id, target_id, detail, host(ip) FROM audit_log"
            " WHERE action = %s ORDER BY id", (action,))

    async def sign_in(self, email: str, password: str = PASSWORD) -> Browser:
        """A browser signed in as C{email}."""
        browser = self.browser()
        await browser.get("/login")
        response = await browser.form("/login", {"email": email, "password": password})
        assert response.code == 303, (response.code, response.text)
        await browser.get("/")  # the session's CSRF token, as the next page would give it
        return browser


async def start_dashboard(testcase: TestCase, env: Mapping[str, str] | None = None,
                          extra_groups: Sequence[object] = (), listen: bool = False,
                          live_options: Mapping[str, Any] | None = None) -> Running:
    """
    The dashboard on a fresh database, cleaned up with C{testcase}; with
    C{listen}, a listener follows the revocations that end live streams.
    """
    conninfo = fresh_database(testcase)
    # Listen first, so that the public URL (links in mail, the GitHub
    # callback) names the real port.
    slot = _Slot()
    port = reactor.listenTCP(0, dashboard_site(slot), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    environ = {"VEIL_DATABASE_URL": conninfo, "VEIL_DATA_DIR": testcase.mktemp(),
               "VEIL_AUTH_PUBLIC_URL": f"http://127.0.0.1:{port.getHost().port}",
               # Nothing answers there: a DNS check fails at once unless a test
               # points dns.resolvers at its own loopback DNS server.
               "VEIL_DNS_RESOLVERS": "127.0.0.1:9", "VEIL_DNS_TIMEOUT": "0.2",
               "VEIL_DNS_ATTEMPTS": "1", "VEIL_DNS_PROXY_CNAME": "edge.veil.test"}
    environ.update(env or {})
    config = load(None, environ)
    db = Database(conninfo, reactor, min_size=1, max_size=4, connect_timeout=5.0)
    db.start()
    testcase.addCleanup(db.close)
    clock = TestClock()
    accounts = make_accounts(config, reactor, db, clock)
    await accounts.start()
    testcase.addCleanup(accounts.stop)
    services = Services(config, clock=clock, reactor=reactor, accounts=accounts)
    services.use_database(db)
    services.dns = DnsVerifier.from_config(config, db, reactor)
    services.explainer = Explainer(reactor)
    testcase.addCleanup(services.explainer.stop)
    hub = Hub(reactor, linger=60.0)
    live = services.live = LiveMount(hub, services.logs.latest, accounts.store, reactor,
                                     **(live_options or {}))
    testcase.addCleanup(live.stream.close_all)
    listener = None
    if listen:
        listener = ListenerService(conninfo, reactor, connect_timeout=5.0)
        live.follow(listener)
        listener.startService()
        testcase.addCleanup(listener.stopService)
        testcase.addCleanup(live.unfollow)
    dashboard = Dashboard(services, [*groups(services), *extra_groups], nav=NAV)
    slot.target = dashboard.resource()
    return Running(config, db, accounts, dashboard, clock, port, conninfo, hub, live, listener)


class _Slot(Resource):
    """The site's root until the dashboard exists."""

    isLeaf = True
    target: Any = None

    def render(self, request: Any) -> Any:
        return self.target.render(request)


class _Drop(Protocol):
    """Reads nothing: closes the connection as soon as the body starts."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        pass


_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_META = re.compile(r'<meta name="csrf-token" content="([^"]*)"')


@attrs.define(eq=False)
class Reply:
    code: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0]

    def set_cookies(self) -> list[str]:
        return self.headers.getRawHeaders("set-cookie") or []


class Browser:
    """
    An HTTP client with cookies that does not follow redirects and
    remembers the last CSRF token a page gave it.
    """

    def __init__(self, base: str, extra_headers: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.cookies = CookieJar()
        self.csrf: str | None = None
        self.extra_headers = dict(extra_headers or {})
        self._http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)),
                                cookiejar=self.cookies)

    def cookie(self, name: str) -> str | None:
        for cookie in self.cookies:
            if cookie.name == name:
                return cookie.value
        return None

    def forget_cookies(self) -> None:
        self.cookies.clear()

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      data: bytes | None = None) -> Reply:
        all_headers = {"Accept": "text/html", **self.extra_headers, **(headers or {})}
        response = await self._http.request(method, self.base + path, headers=all_headers,
                                            data=data, allow_redirects=False)
        body = await treq.content(response)
        reply = Reply(response.code, response.headers, body)
        text = reply.text
        found = _CSRF.search(text) or _META.search(text)
        if found is not None and found.group(1):
            self.csrf = found.group(1)
        return reply

    def get(self, path: str, **kwargs: Any) -> Deferred[Reply] | Any:
        return self.request("GET", path, **kwargs)

    async def status(self, method: str, path: str, *, token: str | None = None,
                     headers: Mapping[str, str] | None = None) -> Reply:
        """
        Only the status and headers of a response (a stream stays open:
        the connection is dropped once they have come).
        """
        all_headers = {"Accept": "application/json", **self.extra_headers, **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await self._http.request(method, self.base + path, headers=all_headers,
                                            allow_redirects=False, unbuffered=True)
        body = b""
        if response.headers.getRawHeaders("content-type", [""])[0].startswith(
                "text/event-stream"):
            response.deliverBody(_Drop())
        else:
            body = await treq.content(response)
        return Reply(response.code, response.headers, body)

    async def form(self, path: str, fields: Mapping[str, Any], *, csrf: bool = True,
                   headers: Mapping[str, str] | None = None) -> Reply:
        """POST an HTML form (with the last CSRF token unless C{csrf} is false)."""
        values = dict(fields)
        if csrf and self.csrf is not None:
            values.setdefault("csrf_token", self.csrf)
        return await self.request(
            "POST", path, data=urlencode(values).encode("utf-8"),
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    async def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                  csrf: bool = True, headers: Mapping[str, str] | None = None) -> Reply:
        """A JSON API call, with a bearer token or this browser's cookies (and CSRF header)."""
        all_headers = {"Accept": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        elif csrf and self.csrf is not None and method not in ("GET", "HEAD"):
            all_headers.setdefault("X-CSRF-Token", self.csrf)
        data = None
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
            data = json.dumps(body, default=str).encode("utf-8")
        return await self.request(method, path, headers=all_headers, data=data)
