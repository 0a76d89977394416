"""
Tests for C{veil users} and C{veil tokens} against a real PostgreSQL, and
for what they make working against the real dashboard on the same
database.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import threads
from twisted.trial.unittest import TestCase

import veil
from tests.integration.test_cli import CliCase, Result
from tests.support.dashboard import PASSWORD, Running, start_dashboard
from veil.store.admin import OPERATOR_EMAIL


class UsersTests(CliCase):
    """veil users add|list|disable|enable."""

    def stdin(self, text: str) -> None:
        self.patch(sys, "stdin", io.StringIO(text))

    async def test_add_with_password(self) -> None:
        """--password-stdin reads one line, checks the rules and stores an argon2id hash."""
        self.stdin(PASSWORD + "\n")
        added = await self.ok("users", "add", "Root@Example.com", "--admin", "--password-stdin")
        self.assertIn("Added Root@Example.com (administrator)", added.out)
        [(email, hashed, admin)] = self.rows(
            "SELECT email, password_hash, is_admin FROM users WHERE email <> %s",
            (OPERATOR_EMAIL,))
        self.assertEqual((email, admin), ("Root@Example.com", True))
        self.assertTrue(hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$"))
        self.assertNotIn(PASSWORD, added.out)
        [(_, detail)] = self.rows("SELECT action, detail FROM audit_log"
                                       " WHERE action = 'user.create'")
        self.assertEqual(detail, {"admin": True, "password": True})

    async def test_add_refused(self) -> None:
        """A weak password, a bad address or a taken one is refused with a message."""
        self.stdin("password1234\n")
        weak = await self.veil("users", "add", "a@example.com", "--password-stdin")
        self.assertEqual(weak.status, 1)
        self.assertIn("too common", weak.err)
        bad = await self.veil("users", "add", "not-an-address")
        self.assertEqual(bad.status, 1)
        self.assertIn("e-mail address", bad.err)
        await self.ok("users", "add", "a@example.com")
        again = await self.veil("users", "add", "A@EXAMPLE.COM")
        self.assertEqual(again.status, 1)
        self.assertIn("exists already", again.err)

    async def test_list_and_disable(self) -> None:
        """The list shows each account; disabling one is shown, and is idempotent."""
        await self.ok("users", "add", "b@example.com")
        self.stdin(PASSWORD + "\n")
        await self.ok("users", "add", "a@example.com", "--admin", "--password-stdin")
        listed = await self.ok("users", "list")
        lines = listed.out.splitlines()
        self.assertTrue(lines[0].startswith("EMAIL"))
        self.assertTrue(lines[1].startswith("a@example.com  admin  enabled  yes"))
        self.assertTrue(lines[2].startswith("b@example.com  user   enabled  no"))
        self.assertNotIn(OPERATOR_EMAIL, listed.out)
        disabled = await self.ok("users", "disable", "b@example.com")
        self.assertIn("Disabled b@example.com", disabled.out)
        again = await self.ok("users", "disable", "b@example.com")
        self.assertIn("already disabled", again.out)
        as_json = json.loads((await self.ok("users", "list", "--json")).out)
        self.assertEqual([(u["email"], u["disabled"]) for u in as_json],
                         [("a@example.com", False), ("b@example.com", True)])
        self.assertIn("Enabled", (await self.ok("users", "enable", "b@example.com")).out)

    async def test_last_administrator(self) -> None:
        """The last enabled administrator cannot be disabled."""
        await self.ok("users", "add", "a@example.com", "--admin")
        refused = await self.veil("users", "disable", "a@example.com")
        self.assertEqual(refused.status, 1)
        self.assertIn("last enabled administrator", refused.err)


class TokensTests(CliCase):
    """veil tokens create|list|revoke."""

    async def test_create_list_revoke(self) -> None:
        """create prints only the token; list shows it without the secret; revoke ends it."""
        await self.ok("users", "add", "dev@example.com")
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        made = await self.ok("tokens", "create", "--user", "dev@example.com")
        token = made.out.strip()
        self.assertRegex(made.out, r"^veil_pat_[A-Za-z0-9_-]{43}_[0-9A-Za-z]{6}\n$")
        listed = await self.ok("tokens", "list")
        self.assertIn("dev@example.com", listed.out)
        self.assertIn("read-write", listed.out)
        self.assertNotIn(token, listed.out)
        [entry] = json.loads((await self.ok("tokens", "list", "--json")).out)
        self.assertEqual((entry["status"], entry["site"]), ("active", None))
        revoked = await self.ok("tokens", "revoke", entry["id"])
        self.assertIn("stops working at once", revoked.out)
        [entry] = json.loads((await self.ok("tokens", "list", "--json")).out)
        self.assertEqual(entry["status"], "revoked")
        unknown = await self.veil("tokens", "revoke", entry["id"])
        self.assertEqual(unknown.status, 1)

    async def test_options(self) -> None:
        """--site, --read-only and --expires shape the token; bad values are refused."""
        await self.ok("users", "add", "dev@example.com")
        bad = await self.veil("tokens", "create", "--user", "dev@example.com", "--site",
                              "shop.example.com")
        self.assertEqual(bad.status, 1)
        for expires in ("2y", "soon"):
            result = await self.veil("tokens", "create", "--user", "dev@example.com",
                                     "--expires", expires)
            self.assertEqual(result.status, 1, expires)
        unknown = await self.veil("tokens", "create", "--user", "nobody@example.com")
        self.assertEqual(unknown.status, 1)
        await self.ok("tokens", "create", "--user", "dev@example.com", "--read-only",
                      "--expires", "30d", "--name", "backup")
        [entry] = json.loads((await self.ok("tokens", "list", "--json")).out)
        self.assertTrue(entry["read_only"])
        self.assertEqual(entry["name"], "backup")
        self.assertIsNotNone(entry["expires_at"])


class WithDashboardTests(TestCase):
    """What the command line makes works in the dashboard, through the console script."""

    timeout = 120

    async def script(self, running: Running, *argv: str, stdin: str = "") -> Result:
        root = str(Path(veil.__file__).resolve().parent.parent)
        env = {"VEIL_DATABASE_URL": running.conninfo, "PYTHONPATH": root,
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        code = "import sys; from veil.cli import main; sys.exit(main())"
        done = await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", code, *argv], input=stdin.encode(),
            capture_output=True, env=env, cwd=root, timeout=60)
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode())

    async def test_user_and_token(self) -> None:
        """
        A user added with its password on standard input signs in; a token
        printed on standard output authenticates; disabling ends both at once.
        """
        running = await start_dashboard(self)
        added = await self.script(running, "users", "add", "ops@example.com",
                                  "--password-stdin", stdin=PASSWORD + "\n")
        self.assertEqual(added.status, 0, added.err)
        browser = await running.sign_in("ops@example.com")
        made = await self.script(running, "tokens", "create", "--user", "ops@example.com",
                                 "--read-only")
        self.assertEqual(made.status, 0, made.err)
        token = made.out.strip()
        script = running.browser()
        me = await script.api("GET", "/api/v1/me", token=token)
        self.assertEqual((me.code, me.json()["email"]), (200, "ops@example.com"))
        disabled = await self.script(running, "users", "disable", "ops@example.com")
        self.assertEqual(disabled.status, 0, disabled.err)
        self.assertEqual((await script.api("GET", "/api/v1/me", token=token)).code, 401)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 401)
