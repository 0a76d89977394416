"""
What auth leaves behind: no e-mail address, password, token, cookie or
link in the application log, and no secret in the audit log, across every
sign-in path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import treq
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support.dashboard import PASSWORD, start_dashboard
from tests.support.fake_github import FakeGithub, GithubUser

EMAIL = "Private.Person@example.com"
GITHUB_EMAIL = "gh.person@example.org"


def event_text(event: dict[str, Any]) -> str:
    parts = [formatEvent(event)]
    for value in event.values():
        if isinstance(value, (str, bytes, int, float)):
            parts.append(str(value))
    failure = event.get("log_failure")
    if failure is not None:
        parts.append(failure.getTraceback())
    return "\n".join(parts)


class LogHygieneTests(TestCase):
    """Every auth path, and nothing personal or secret in any log event."""

    timeout = 120

    async def test_sweep(self) -> None:
        """Sign-in by password (good and bad), setup, magic link, GitHub, tokens: logs stay clean."""
        fake = FakeGithub()
        fake.start()
        self.addCleanup(fake.stop)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        running = await start_dashboard(self, env=fake.env())
        secrets: list[str] = [EMAIL, EMAIL.lower(), PASSWORD, GITHUB_EMAIL, "wrong password!"]

        setup = await running.accounts.create_setup_link()
        setup_token = setup.rpartition("=")[2]
        admin = running.browser()
        await admin.get(f"/setup?token={setup_token}")
        await admin.form("/setup", {"token": setup_token, "email": EMAIL, "password": PASSWORD,
                                    "password_confirm": PASSWORD})
        await admin.get("/")
        secrets += [setup_token, admin.cookie("veil_session"), admin.csrf]

        failing = running.browser()
        await failing.get("/login")
        await failing.form("/login", {"email": EMAIL, "password": "wrong password!"})
        await failing.form("/login", {"email": "ghost@example.com", "password": "wrong password!"})
        secrets.append("ghost@example.com")

        await failing.get("/login/link")
        await failing.form("/login/link", {"email": EMAIL})
        await running.accounts.background()
        [mail] = list((running.config.data_dir / "outbox").glob("*.eml"))
        link_token = re.search(r"token=([A-Za-z0-9_-]{43})", Path(mail).read_text()).group(1)
        await failing.get(f"/login/magic?token={link_token}")
        await failing.form("/login/magic", {"token": link_token})
        secrets += [link_token, failing.cookie("veil_session")]

        created = (await admin.api("POST", "/api/v1/tokens", {"name": "ci"})).json()
        token = created["token"]
        await running.browser().api("GET", "/api/v1/me", token=token)
        await running.browser().api("GET", "/api/v1/me", token=token[:-2] + "zz")
        await running.accounts.flush_token_uses()
        secrets.append(token)

        await running.user(GITHUB_EMAIL)
        fake.user = GithubUser(42, "ghperson", [(GITHUB_EMAIL, True, True)])
        github = running.browser()
        await github.get("/login")
        start = await github.form("/auth/github/start", {})


        response = await treq.get(start.header("location"), allow_redirects=False,
                                   persistent=False)
        await treq.content(response)
        callback = response.headers.getRawHeaders("location")[0]
        await github.get(callback[callback.index("/auth/"):])
        secrets += [t for t in fake._tokens] + [github.cookie("veil_session")]

        await admin.form("/logout", {})

        self.assertGreater(len(events), 10)
        for event in events:
            text = event_text(event)
            for secret in secrets:
                self.assertNotIn(secret, text, formatEvent(event))
        audit = await running.db.query("test.audit", "SELECT action, target_id, detail::text,"
                                       " host(ip) FROM audit_log")
        self.assertGreater(len(audit), 8)
        for row in audit:
            for secret in secrets:
                self.assertNotIn(secret, str(row))
