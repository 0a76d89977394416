"""
A site's WAF policy, changed with the operator's CLI, applied by running
Veils at once: exclusions (on two processes, through NOTIFY, without a
restart), paranoia level and threshold, endpoint profiles; C{veil waf check
--site} explaining a saved request with the site's exclusions; and the site
settings the CLI saves (body size, TRACE, inward origins).
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support.wafsite import (
    execute,
    get,
    listen_recording_origin,
    post,
    request_id,
    start_wafveil,
)
from tests.support.waiting import until
from veil.store.policies import EXCLUSION_ID

#: Malicious at paranoia 2 and above (a URL with a raw IP address as a
#: whole value: two warnings, score 6), benign at 1.
LEVEL2 = "/?next=http://203.0.113.9/"
XSS = "/?q=<script>alert(1)</script>"


def exclusion_id(output: str) -> str:
    return next(w.rstrip(".") for w in output.split() if EXCLUSION_ID.fullmatch(w.rstrip(".")))


class LiveExclusionTests(TestCase):
    """An exclusion added with the CLI stops a block on every running Veil at once."""

    timeout = 120

    async def test_two_processes_within_a_second(self) -> None:
        """
        Two running Veils block an XSS; `veil waf exclude --class xss` makes
        both forward it within a second of the command, through NOTIFY (the
        policy tables' periodic refreshers did not run meanwhile), without a
        restart; `veil waf unexclude` brings the block back the same way.
        """
        waf = await start_wafveil(self, count=2)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream, "--allow-plain-http")
        request = get(XSS, "shop.test")
        for index in (0, 1):
            response = await waf.send(request, "shop.test", index=index, tls=False)
            self.assertEqual(response.status, 403)
        site = waf.veil.edge.sites.get("shop.test").id
        refreshers = [next(w for w in v.workers if w.name == "policy-table") for v in waf.veils]
        runs = [w.runs for w in refreshers]

        output = await waf.cli("waf", "exclude", "shop.test", "--class", "xss",
                               "--comment", "a forum that takes HTML")
        exclusion = exclusion_id(output)
        await until(lambda: all(v.policies.get(site).exclusions for v in waf.veils), 1.0,
                    "the exclusion on both Veils")
        self.assertEqual([w.runs for w in refreshers], runs)
        for index in (0, 1):
            response = await waf.send(request, "shop.test", index=index, tls=False)
            self.assertEqual(response.status, 200)
        [row] = await waf.logged([request_id(response)])
        # Excluded matches do not count: the row is benign.
        self.assertEqual((row["classification"], row["rule_ids"]), (None, None))

        await waf.cli("waf", "unexclude", exclusion)
        await until(lambda: not any(v.policies.get(site).exclusions for v in waf.veils), 1.0,
                    "the exclusion gone from both Veils")
        for index in (0, 1):
            response = await waf.send(request, "shop.test", index=index, tls=False)
            self.assertEqual(response.status, 403)
        self.assertEqual(len(origin.received), 2)

    async def test_exclusion_for_a_path_and_target(self) -> None:
        """
        An exclusion of a class for one form field under a path prefix lets
        that field through there only: under another path, or in another
        field, the same payload still blocks.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        site = waf.veil.edge.sites.get("shop.test").id
        await waf.cli("waf", "exclude", "shop.test", "--class", "xss", "--path", "/forum/",
                      "--target", "args:body")
        await until(lambda: waf.veil.policies.get(site).exclusions, 1.0, "the exclusion")
        statuses = []
        for path, field in (("/forum/post", "body"), ("/shop/review", "body"),
                            ("/forum/post", "title")):
            statuses.append((await waf.send(post(
                path, "shop.test", "application/x-www-form-urlencoded",
                f"{field}=%3Cscript%3Ealert(1)%3C%2Fscript%3E".encode()), "shop.test")).status)
        self.assertEqual(statuses, [200, 403, 403])
        self.assertEqual([r.target for r in origin.received], [b"/forum/post"])


class LiveTuningTests(TestCase):
    """Paranoia level, threshold, mode and endpoint profiles apply without a restart."""

    timeout = 120

    async def test_paranoia_and_threshold(self) -> None:
        """
        A request benign at paranoia 1 is blocked once the site is at 2, goes
        through again when the threshold rises above its score, and is logged
        "would block" once the site is in monitor mode.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        site = waf.veil.edge.sites.get("shop.test").id
        request = get(LEVEL2, "shop.test")
        statuses = [(await waf.send(request, "shop.test")).status]

        async def change(*options: str, seen) -> None:
            await waf.cli("sites", "set", "shop.test", *options)
            await until(lambda: seen(waf.veil.policies.get(site)), 1.0, " ".join(options))
            response = await waf.send(request, "shop.test")
            statuses.append(response.status)
            ids.append(request_id(response))

        ids: list[str] = []
        await change("--paranoia", "2", seen=lambda p: p.paranoia == 2)
        await change("--threshold", "7", seen=lambda p: p.threshold == 7)
        await change("--threshold", "5", "--mode", "monitor",
                     seen=lambda p: (p.threshold, p.mode) == (5, "monitor"))
        self.assertEqual(statuses, [200, 403, 200, 200])
        rows = await waf.logged(ids)
        self.assertEqual([(r["classification"], r["blocked"], r["anomaly_score"]) for r in rows],
                         [("malicious", True, 6), ("suspicious", False, 6),
                          ("malicious", False, 6)])
        self.assertEqual(len(origin.received), 3)

    async def test_endpoint_profiles(self) -> None:
        """
        A C{skip} profile lets an attack to its path through uninspected; a
        C{deep} profile inspects its paths at the strictest paranoia, so a
        request benign elsewhere is blocked there.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        site = waf.veil.edge.sites.get("shop.test").id
        await waf.cli("waf", "profile", "shop.test", "/healthz", "--mode", "skip")
        await waf.cli("waf", "profile", "shop.test", "/admin*", "--mode", "deep")
        await until(lambda: len(waf.veil.policies.get(site).profiles) == 2, 1.0,
                    "the profiles")
        results = []
        for target in ("/healthz?q=<script>alert(1)</script>", XSS,
                       LEVEL2, "/admin/users" + LEVEL2[1:]):
            response = await waf.send(get(target, "shop.test"), "shop.test")
            results.append(response.status)
        self.assertEqual(results, [200, 403, 200, 403])
        self.assertEqual([r.target for r in origin.received],
                         [b"/healthz?q=<script>alert(1)</script>", LEVEL2.encode()])


class CheckSavedRequestTests(TestCase):
    """C{veil waf check --site} explains a saved request with the site's real policy."""

    timeout = 120

    async def test_explains_with_exclusions(self) -> None:
        """
        A saved request that the running Veil blocks is explained as blocked
        (exit 1) with its rules and targets; with an exclusion added, check
        says which exclusion silences each match and exits 0, as the proxy
        now forwards it; --paranoia, --threshold and --mode override the
        site's policy.
        """
        waf = await start_wafveil(self)
        _, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        site = waf.veil.edge.sites.get("shop.test").id
        raw = post("/reviews", "shop.test", "application/x-www-form-urlencoded",
                   b"stars=5&comment=%3Csvg%20onload%3Dalert(1)%3E")
        saved = Path(self.mktemp())
        saved.write_bytes(raw)
        self.assertEqual((await waf.send(raw, "shop.test")).status, 403)

        out = await waf.cli("waf", "check", "--site", "shop.test", str(saved), status=1)
        self.assertIn("policy: site shop.test: mode block, paranoia 1, threshold 5", out)
        self.assertIn(": blocked", out)
        self.assertIn("on args:comment", out)

        exclusion = exclusion_id(await waf.cli("waf", "exclude", "shop.test", "--class", "xss",
                                               "--path", "/reviews"))
        await until(lambda: waf.veil.policies.get(site).exclusions, 1.0, "the exclusion")
        self.assertEqual((await waf.send(raw, "shop.test")).status, 200)
        out = await waf.cli("waf", "check", "--site", "shop.test", str(saved))
        self.assertIn("policy: site shop.test (1 exclusion)", out)
        self.assertIn(f"on args:comment  EXCLUDED by {exclusion}", out)
        self.assertIn("verdict: benign, score 0", out)

        verdict = json.loads(await waf.cli("waf", "check", "--site", "shop.test", "--json",
                                           "--paranoia", "2", "--threshold", "3", "--mode",
                                           "monitor", str(saved)))
        self.assertEqual((verdict["paranoia"], verdict["threshold"], verdict["mode"]),
                         (2, 3, "monitor"))
        self.assertEqual({m["excluded_by"] for m in verdict["matches"] if m["class"] == "xss"},
                         {exclusion})


class SiteSettingsTests(TestCase):
    """What the CLI saves about a site besides the WAF: body size, TRACE, its origin."""

    timeout = 120

    async def test_body_size_and_trace(self) -> None:
        """
        `veil sites set --max-body-size` and `--allow-trace` change the
        running proxy's answers (413, 405) and are audited; a TRACE the
        proxy lets through is still the WAF's to judge (a protocol rule
        refuses it until it is excluded).
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        trace = b"TRACE / HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        big = (b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Type: image/png\r\n"
               b"Content-Length: 2048\r\n\r\n" + b"p" * 2048)
        self.assertEqual((await waf.send(trace, "shop.test")).status, 405)
        self.assertEqual((await waf.send(big, "shop.test")).status, 200)
        out = await waf.cli("sites", "set", "shop.test", "--max-body-size", "1k",
                            "--allow-trace")
        self.assertIn("max body size 1 KiB (was 100 MiB), TRACE on (was off)", out)
        await until(lambda: waf.veil.edge.sites.get("shop.test").allow_trace, 1.0,
                    "the new site settings")
        refused = await waf.send(trace, "shop.test")
        self.assertEqual(refused.status, 403)
        [row] = await waf.logged([request_id(refused)])
        await waf.cli("waf", "exclude", "shop.test", "--rule", str(row["rule_ids"][0]))
        site = waf.veil.edge.sites.get("shop.test").id
        await until(lambda: waf.veil.policies.get(site).exclusions, 1.0, "the exclusion")
        self.assertEqual((await waf.send(trace, "shop.test")).status, 200)
        self.assertEqual((await waf.send(big, "shop.test")).status, 413)
        out = await waf.cli("sites", "set", "shop.test", "--no-allow-trace", "--max-body-size",
                            "1024")
        self.assertIn("shop.test: TRACE off (was on).", out)
        audit = execute(waf.conninfo, "SELECT detail FROM audit_log WHERE action ="
                        " 'site.update' ORDER BY id")
        self.assertEqual([row[0] for row in audit],
                         [{"max_body_size": 1024, "allow_trace": True},
                          {"max_body_size": 1024, "allow_trace": False}])
        await waf.cli("sites", "set", "shop.test", "--max-body-size", "2T", status=1)
        self.assertEqual([r.method for r in origin.received], [b"POST", b"TRACE"])

    async def test_inward_origins_refused(self) -> None:
        """
        `veil sites add` applies the operator's origin policy: Veil's own
        ports are refused, and loopback ones too when the configuration does
        not allow private origins.
        """
        waf = await start_wafveil(self)
        edge = waf.port("edge")
        out = await waf.cli("sites", "add", "loop.test", "--origin",
                            f"http://127.0.0.1:{edge}", "--verified", status=1,
                            env={"VEIL_EDGE_PORT": str(edge)})
        self.assertIn("own listening addresses", out)
        out = await waf.cli("sites", "add", "private.test", "--origin", "http://127.0.0.1:9000",
                            "--verified", status=1,
                            env={"VEIL_PROXY_ALLOW_PRIVATE_ORIGINS": "false"})
        self.assertIn("private origins are not allowed", out)
        await waf.cli("sites", "add", "private.test", "--origin", "http://127.0.0.1:9000",
                      "--verified")
        self.assertEqual(execute(waf.conninfo, "SELECT domain FROM sites"), [("private.test",)])


class ConfiguredDefaultTests(TestCase):
    """waf.inspect_body_limit is the body limit of every site that sets none."""

    timeout = 120

    async def test_default_limit_from_configuration(self) -> None:
        """
        A running Veil and the CLI with waf.inspect_body_limit = 32768 give a
        site without a limit of its own 32 KiB; one set on the site wins.
        """
        waf = await start_wafveil(self, VEIL_WAF_INSPECT_BODY_LIMIT="32768")
        _, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        site = waf.veil.edge.sites.get("shop.test").id
        self.assertEqual(waf.veil.policies.get(site).inspect_body_limit, 32768)
        out = await waf.cli("waf", "policy", "shop.test",
                            env={"VEIL_WAF_INSPECT_BODY_LIMIT": "32768"})
        self.assertIn("bodies: inspect 32 KiB (Veil's default), beyond that inspect-prefix", out)
        await waf.cli("sites", "set", "shop.test", "--inspect-body-limit", "8k")
        await until(lambda: waf.veil.policies.get(site).inspect_body_limit == 8192, 1.0,
                    "the site's own limit")
