"""
The WAF end to end in a running Veil: attacks refused at head time, a site
in monitor mode, look-alikes, the verdict in the request log, redaction,
and the WAF switched off.

Every test runs real VeilServices (the engine compiled at start-up) on a
real PostgreSQL, drives them with the operator's CLI, talks to them with
real TLS clients, and checks what an origin of its own received.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.wafsite import (
    ATTACK_TYPES,
    ATTACKS,
    execute,
    get,
    listen_recording_origin,
    request_id,
    start_wafveil,
)


class AttackTests(TestCase):
    """The issue's four attacks, to a site in block mode and to one in monitor mode."""

    timeout = 120

    async def test_blocked_with_request_id(self) -> None:
        """
        Each attack gets a 403 whose page and X-Request-Id name the request;
        none reaches the origin; each is logged as malicious by the signature
        stage, blocked, with its attack type, rule ids, score and an excerpt.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        ids = []
        for target, headers in ATTACKS:
            response = await waf.send(get(target, "shop.test", headers), "shop.test")
            self.assertEqual(response.status, 403, target)
            rid = request_id(response)
            self.assertIn(rid.encode(), response.body)
            ids.append(rid)
        self.assertEqual(origin.received, [])
        rows = await waf.logged(ids)
        for row, attack_type in zip(rows, ATTACK_TYPES):
            self.assertEqual((row["status"], row["classification"], row["classifier"],
                              row["blocked"], row["attack_type"]),
                             (403, "malicious", "signature", True, attack_type), row)
            self.assertTrue(row["rule_ids"], row)
            self.assertGreaterEqual(row["anomaly_score"], 5)
            self.assertGreaterEqual(row["confidence"], 0.5)
            self.assertTrue(row["excerpt"].startswith("GET /"), row["excerpt"])
        # The excerpt shows what matched: the request line, or the header.
        self.assertIn("user-agent: ${jndi:ldap://x/a}", rows[3]["excerpt"])

    async def test_monitor_mode(self) -> None:
        """
        The same attacks to a site in monitor mode reach the origin intact and
        are logged as malicious with blocked false ("would block") and their
        rule ids; the live hub's rows carry the same verdict.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("watch.test", upstream, "--mode", "monitor")
        events = []
        subscription = waf.veil.hub.subscribe(None, on_ready=lambda sub: events.extend(sub.take()))
        self.addCleanup(subscription.cancel)
        ids = []
        for target, headers in ATTACKS:
            response = await waf.send(get(target, "watch.test", headers), "watch.test")
            self.assertEqual(response.status, 200, target)
            ids.append(request_id(response))
        self.assertEqual([r.target.decode() for r in origin.received],
                         [target for target, _ in ATTACKS])
        self.assertEqual(origin.received[3].header("User-Agent"), "${jndi:ldap://x/a}")
        rows = await waf.logged(ids)
        for row, attack_type in zip(rows, ATTACK_TYPES):
            self.assertEqual((row["status"], row["classification"], row["classifier"],
                              row["blocked"], row["attack_type"]),
                             (200, "malicious", "signature", False, attack_type), row)
            self.assertTrue(row["rule_ids"], row)
        live = [e.data() for e in events if e.data()["request_id"] in ids]
        self.assertEqual([(d["classification"], d["blocked"], d["rule_ids"]) for d in live],
                         [("malicious", False, row["rule_ids"]) for row in rows])

    async def test_lookalikes_pass_and_cost_nothing(self) -> None:
        """
        Benign requests that look like the attacks reach the origin, and
        their rows carry no verdict at all (benign requests cost the log
        nothing: no classification, rule ids, score or excerpt).
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        lookalikes = ["/?id=12", "/?q=select%20the%20best%20union%20of%20colors",
                      "/?q=O%27Reilly", "/?q=cat%20food", "/?q=%3Cb%3Ebold%3C/b%3E",
                      "/?q=semicolon;%20then%20cat", "/search?q=script%20alert"]
        ids = []
        for target in lookalikes:
            response = await waf.send(get(target, "shop.test", {"User-Agent": "Mozilla/5.0"}),
                                      "shop.test")
            self.assertEqual(response.status, 200, target)
            ids.append(request_id(response))
        self.assertEqual([r.target.decode() for r in origin.received], lookalikes)
        for row in await waf.logged(ids):
            self.assertEqual({k: row[k] for k in ("classification", "classifier", "confidence",
                                                  "attack_type", "blocked", "rule_ids",
                                                  "anomaly_score", "excerpt")},
                             {"classification": None, "classifier": None, "confidence": None,
                              "attack_type": None, "blocked": False, "rule_ids": None,
                              "anomaly_score": None, "excerpt": None})

    async def test_excerpt_masks_secrets(self) -> None:
        """
        The excerpt of a blocked request masks cookies, Authorization and
        password- and token-like parameters, and keeps what matched.
        """
        waf = await start_wafveil(self)
        _, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        response = await waf.send(get(
            "/login?user=ann&password=hunter2secret&access_token=tok123456&q=<script>alert(1)"
            "</script>", "shop.test",
            {"Cookie": "session=cookievalue42; theme=dark",
             "Authorization": "Bearer authsecret789", "X-Api-Key": "keyvalue555"}),
            "shop.test")
        self.assertEqual(response.status, 403)
        [row] = await waf.logged([request_id(response)])
        excerpt = row["excerpt"]
        for secret in ("hunter2secret", "tok123456", "cookievalue42", "dark", "authsecret789",
                       "keyvalue555"):
            self.assertNotIn(secret, excerpt)
        self.assertIn("password=***", excerpt)
        self.assertIn("authorization: Bearer ***", excerpt)
        self.assertIn("cookie: session=***; theme=***", excerpt)
        self.assertIn("<script>alert(1)</script>", excerpt)
        self.assertIn("user=ann", excerpt)


class ScrutinyTests(TestCase):
    """Stage 1 before the signatures: decisions answer first, scrutiny inspects deeper."""

    timeout = 120

    async def test_decisions_and_scrutiny(self) -> None:
        """
        A ban is a 403 logged as malicious by the ip classifier (the
        signatures are not consulted); a scrutinize decision inspects one
        paranoia level higher, so a request benign at level 1 but malicious
        at level 2 is blocked only under scrutiny; a log_only decision marks
        a benign request's row suspicious by ip.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        # A URL with a raw IP address as a whole value: level-2 rules only.
        level2 = get("/?next=http://203.0.113.9/", "shop.test")
        first = await waf.send(level2, "shop.test")
        self.assertEqual(first.status, 200)

        async def decide(kind: str) -> None:
            execute(waf.conninfo, "DELETE FROM decisions")
            await waf.cli("decisions", "add", "127.0.0.1", "--type", kind, "--for", "1h",
                          "--site", "shop.test", "--reason", "test")
            await waf.veil.edge.decisions.reload()

        await decide("scrutinize")
        scrutinised = await waf.send(level2, "shop.test")
        self.assertEqual(scrutinised.status, 403)
        await decide("log_only")
        flagged = await waf.send(get("/?id=12", "shop.test"), "shop.test")
        self.assertEqual(flagged.status, 200)
        await decide("ban")
        banned = await waf.send(get("/?id=12", "shop.test"), "shop.test")
        self.assertEqual(banned.status, 403)
        rows = await waf.logged([request_id(r) for r in (first, scrutinised, flagged, banned)])
        self.assertEqual([(r["classification"], r["classifier"], r["blocked"]) for r in rows],
                         [(None, None, False), ("malicious", "signature", True),
                          ("suspicious", "ip", False), ("malicious", "ip", True)])
        self.assertEqual([r.target for r in origin.received],
                         [b"/?next=http://203.0.113.9/", b"/?id=12"])


class SwitchedOffTests(TestCase):
    """C{waf.enabled = false}: the signature stage is not built and attacks pass."""

    timeout = 120

    async def test_signatures_off(self) -> None:
        """No engine is compiled; an attack reaches the origin and its row has no verdict."""
        waf = await start_wafveil(self, VEIL_WAF_ENABLED="false")
        self.assertIsNone(waf.veil.engine)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        target, headers = ATTACKS[0]
        response = await waf.send(get(target, "shop.test", headers), "shop.test")
        self.assertEqual(response.status, 200)
        self.assertEqual(len(origin.received), 1)
        [row] = await waf.logged([request_id(response)])
        self.assertEqual((row["classification"], row["blocked"]), (None, False))

