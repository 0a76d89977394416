"""
The dashboard in a real Chromium (headless, through WebDriver), against a
real C{twistd veil} process: the first-run link from its log creates the
first administrator, who signs out and in again; no console errors and no
Content-Security-Policy violations on the way.  A form posted from another
origin is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.integration.test_twistd import REPO, Veil, free_port
from tests.support import browser as chromium
from tests.support.postgres import fresh_database
from tests.support.waiting import until

PASSWORD = "plum orbit lantern 1987"
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/setup\?token=[A-Za-z0-9_-]{43})")


class BrowserTests(TestCase):
    """Sign-up and sign-in as a person does it, in Chromium."""

    timeout = 240

    def setUp(self) -> None:
        reason = chromium.available()
        if reason is not None:
            raise SkipTest(reason)

    async def start_veil(self) -> tuple[Veil, int]:
        data_dir = Path(tempfile.mkdtemp(prefix="veil-browser-"))
        self.addCleanup(shutil.rmtree, data_dir, True)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
            "VEIL_DATA_DIR": str(data_dir), "VEIL_DATABASE_URL": fresh_database(self),
            "VEIL_DASHBOARD_PORT": str(port), "VEIL_EDGE_PORT": str(free_port()),
            "VEIL_HTTP_PORT": str(free_port()),
        }
        veil = Veil()
        transport = reactor.spawnProcess(
            veil, sys.executable, [sys.executable, "-c",
                                   "from twisted.scripts.twistd import run; run()",
                                   "--nodaemon", "--pidfile=", "veil"],
            env=env, path=str(data_dir))

        def stop() -> Any:
            if veil.status is None:
                transport.signalProcess("TERM")
                return veil.ended
            return None

        self.addCleanup(stop)
        await until(lambda: veil.status is not None or LINK.search(veil.output.decode()),
                    60, "the setup link in Veil's log")
        if veil.status is not None:
            raise AssertionError(f"Veil exited {veil.status}:\n{veil.output.decode()}")
        return veil, port

    async def test_first_run_then_sign_in(self) -> None:
        """Setup link → first administrator → sign out → sign in → home, all clean."""
        veil, port = await self.start_veil()
        link = LINK.search(veil.output.decode()).group(1)
        self.assertTrue(link.startswith(f"http://127.0.0.1:{port}/setup?token="))
        visited = await threads.deferToThread(_first_run, link, f"http://127.0.0.1:{port}")
        self.assertEqual(visited, [
            ("setup", "Set up Veil · Veil"),
            ("after setup", "Sites · Veil"),
            ("signed out", "Sign in · Veil"),
            ("signed in", "Sites · Veil"),
            ("account", "Your account · Veil"),
        ])

    async def test_cross_site_form_refused(self) -> None:
        """A form on another origin that posts "sign out" to the dashboard does nothing."""
        veil, port = await self.start_veil()
        link = LINK.search(veil.output.decode()).group(1)
        attacker = Resource()
        page = (f'<!doctype html><html><body><form method="post" action="http://127.0.0.1:{port}'
                f'/logout"><input type="hidden" name="csrf_token" value="guess">'
                f'<button id="go" type="submit">Win a prize</button></form></body></html>'
                ).encode()
        attacker.putChild(b"", _Static(page))
        listening = reactor.listenTCP(0, Site(attacker), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        evil = f"http://localhost:{listening.getHost().port}/"
        result = await threads.deferToThread(_cross_site, link, f"http://127.0.0.1:{port}", evil)
        self.assertEqual(result["status_text"], "refused")
        self.assertEqual(result["still_signed_in"], True)


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.body


def _wait_title(driver: Any, title: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(expected_conditions.title_is(title))


def _check_clean(driver: Any, where: str) -> None:
    problems = chromium.console_problems(driver)
    if problems:
        raise AssertionError(f"{where}: {problems}")


def _setup(driver: Any, link: str) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    visited = []
    driver.get(link)
    _wait_title(driver, "Set up Veil · Veil")
    _check_clean(driver, "setup page")
    visited.append(("setup", driver.title))
    driver.find_element(By.ID, "email").send_keys("admin@example.com")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "password_confirm").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    _wait_title(driver, "Sites · Veil")
    _check_clean(driver, "home after setup")
    visited.append(("after setup", driver.title))
    return visited


def _first_run(link: str, base: str) -> list[tuple[str, str]]:
    """Run in a thread: the whole first-run path in one Chromium."""
    from selenium.webdriver.common.by import By

    with chromium.chromium() as driver:
        visited = _setup(driver, link)
        header = driver.find_element(By.CSS_SELECTOR, ".account-menu a").text
        if header != "admin@example.com":
            raise AssertionError(f"header shows {header!r}")
        driver.find_element(By.CSS_SELECTOR, ".account-menu button[type=submit]").click()
        _wait_title(driver, "Sign in · Veil")
        _check_clean(driver, "signed out")
        if "You are signed out." not in driver.page_source:
            raise AssertionError("no signed-out notice")
        visited.append(("signed out", driver.title))
        email = driver.find_element(By.CSS_SELECTOR, "#login-form input[type=email]")
        password = driver.find_element(By.CSS_SELECTOR, "#login-form input[type=password]")
        email.send_keys("admin@example.com")
        password.send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        _wait_title(driver, "Sites · Veil")
        _check_clean(driver, "signed in")
        visited.append(("signed in", driver.title))
        driver.get(base + "/account")
        _wait_title(driver, "Your account · Veil")
        _check_clean(driver, "account")
        # The script ran: times are shown in local time (textContent), not "UTC".
        times = driver.find_elements(By.CSS_SELECTOR, "time[datetime]")
        if not times or any(t.text.endswith("UTC") for t in times):
            raise AssertionError("dashboard.js did not run")
        visited.append(("account", driver.title))
        return visited


def _cross_site(link: str, base: str, evil: str) -> dict[str, Any]:
    """Run in a thread: signed in, visit another origin whose form posts to Veil."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium.chromium() as driver:
        _setup(driver, link)
        driver.get(evil)
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(base))
        # SameSite=Lax keeps the cookie off a cross-site POST, and without
        # a session or a token nothing happens; either way: an error page.
        source = driver.page_source
        refused = "Sign in first" in source or "Not allowed" in source
        driver.get(base + "/account")
        _wait_title(driver, "Your account · Veil")
        return {"status_text": "refused" if refused else driver.page_source[:500],
                "still_signed_in": "admin@example.com" in driver.page_source}
