"""
Request bodies through the WAF in a running Veil: attacks in JSON, XML,
multipart and form bodies refused at body time before the origin sees a
byte, malformed bodies scored, bodies over the inspection limit handled as
their site says, bodies the engine does not read streamed, and 200 MiB each
way with bounded memory.
"""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import rss_kib
from tests.support.wafsite import (
    get,
    listen_recording_origin,
    post,
    request_id,
    start_wafveil,
)
from tests.support.waiting import until

BOUNDARY = "veilboundary7MA4YWxk"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value
            + f"\r\n--{BOUNDARY}--\r\n".encode())


#: Attacks that only a body reader finds: the head of each request is benign.
BODY_ATTACKS = (
    ("application/json", b'{"user": {"name": "ann", "q": "1\' OR 1=1--"}}', "sqli"),
    ("application/xml", b"<order><item id=\"3\">1' OR '1'='1</item></order>", "sqli"),
    ("text/xml", (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                  b"<a>&x;</a>"), "xxe"),
    (MULTIPART, multipart("comment", b"<script>alert(1)</script>"), "xss"),
    ("application/x-www-form-urlencoded", b"name=ann&cmd=%3Bcat%20%2Fetc%2Fpasswd", "rce"),
)


class BodyAttackTests(TestCase):
    """Attacks in bodies are judged on the held body, before any origin connection."""

    timeout = 120

    async def test_blocked_before_the_origin(self) -> None:
        """
        A JSON, XML, multipart or form body carrying an attack, with a
        Content-Length or chunked, gets a 403 with its request id; the origin
        is never even connected to; the rows say malicious, blocked, by class.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        ids, classes = [], []
        for chunked in (False, True):
            for content_type, body, attack_type in BODY_ATTACKS:
                response = await waf.send(post("/api/orders", "shop.test", content_type, body,
                                               chunked=chunked), "shop.test")
                self.assertEqual(response.status, 403, (content_type, chunked))
                ids.append(request_id(response))
                classes.append(attack_type)
        self.assertEqual((origin.connections, origin.received), (0, []))
        rows = await waf.logged(ids)
        self.assertEqual([(r["classification"], r["blocked"], r["attack_type"]) for r in rows],
                         [("malicious", True, c) for c in classes])
        # The excerpt shows the start of the body.
        self.assertIn("<script>alert(1)</script>", rows[3]["excerpt"])

    async def test_benign_bodies_forwarded_intact(self) -> None:
        """Ordinary JSON, XML, multipart and form bodies reach the origin byte for byte."""
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        bodies = [
            ("application/json", b'{"name": "ann", "bio": "I like cats and O\'Reilly books"}'),
            ("application/xml", b"<order><item id=\"3\">Blue mug, 2 pcs</item></order>"),
            (MULTIPART, multipart("photo", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                                  "cat.png")),
            ("application/x-www-form-urlencoded", b"name=ann&city=S%C3%A3o+Paulo&qty=2"),
        ]
        for content_type, body in bodies:
            response = await waf.send(post("/upload", "shop.test", content_type, body),
                                      "shop.test")
            self.assertEqual(response.status, 200, content_type)
        self.assertEqual([r.body for r in origin.received], [body for _, body in bodies])

    async def test_malformed_bodies_score(self) -> None:
        """
        JSON, XML and multipart bodies that do not parse as declared are a
        scored anomaly (suspicious, by a protocol rule), never a crash: the
        request is answered, forwarded (one anomaly is below the threshold),
        and logged with its rule.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        malformed = [("application/json", b'{"a": [1, 2'), ("application/json", b'{"a": 1,,}'),
                     ("application/xml", b"<a><b></a>"), (MULTIPART, b"no parts here at all"),
                     ("application/json", b"\xff\xfe\x00{\x00\"\x00")]
        ids = []
        for content_type, body in malformed:
            response = await waf.send(post("/api", "shop.test", content_type, body), "shop.test")
            self.assertEqual(response.status, 200, body)
            ids.append(request_id(response))
        self.assertEqual([r.body for r in origin.received], [body for _, body in malformed])
        rows = await waf.logged(ids)
        for row in rows:
            self.assertEqual((row["classification"], row["attack_type"], row["blocked"]),
                             ("suspicious", "protocol", False), row)
            self.assertGreater(row["anomaly_score"], 0)
            self.assertTrue(row["rule_ids"])

    async def test_uninspected_types_stream(self) -> None:
        """
        A body the engine does not read (an image, an octet stream) is not
        inspected: attack text inside it reaches the origin; its head still is.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        payload = b"\x89PNG<script>alert(1)</script>" + b"\x00" * 200_000
        for content_type in ("image/png", "application/octet-stream", "video/mp4"):
            response = await waf.send(post("/upload", "shop.test", content_type, payload),
                                      "shop.test")
            self.assertEqual(response.status, 200)
        self.assertEqual([(r.length, r.sha256) for r in origin.received],
                         [(len(payload), hashlib.sha256(payload).hexdigest())] * 3)
        head_attack = await waf.send(post("/upload?q=<script>alert(1)</script>", "shop.test",
                                          "image/png", payload), "shop.test")
        self.assertEqual(head_attack.status, 403)
        self.assertEqual(len(origin.received), 3)


class OverflowTests(TestCase):
    """A body over its site's inspection limit: its prefix inspected, or refused."""

    timeout = 120

    async def test_inspect_prefix(self) -> None:
        """
        With a 1 KiB limit and inspect-prefix, a larger body (Content-Length
        or chunked) is inspected on its first KiB and then forwarded whole
        and intact; an attack in that first KiB is refused.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        await waf.cli("sites", "set", "shop.test", "--inspect-body-limit", "1k")
        await self.until_limit(waf, 1024)
        body = b'{"notes": "' + b"ordinary words " * 20_000 + b'"}'
        for chunked in (False, True):
            response = await waf.send(post("/notes", "shop.test", "application/json", body,
                                           chunked=chunked), "shop.test")
            self.assertEqual(response.status, 200)
        self.assertEqual([(r.length, r.sha256) for r in origin.received],
                         [(len(body), hashlib.sha256(body).hexdigest())] * 2)
        attack = b'{"q": "<script>alert(1)</script>", "notes": "' + b"x" * 100_000 + b'"}'
        response = await waf.send(post("/notes", "shop.test", "application/json", attack),
                                  "shop.test")
        self.assertEqual(response.status, 403)
        self.assertEqual(len(origin.received), 2)

    async def test_block(self) -> None:
        """
        With a 1 KiB limit and body_overflow block, a Content-Length over it
        is a 413 at once (the body is never sent), a chunked body gets one
        as soon as it passes the limit (the rest never sent), and neither
        reaches the origin; a body of exactly the limit, chunked, and a body
        of a type the engine does not read, of any size, are forwarded.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        await waf.cli("sites", "set", "shop.test", "--inspect-body-limit", "1k",
                      "--body-overflow", "block")
        await self.until_limit(waf, 1024, "block")
        head = post("/notes", "shop.test", "application/json", b"x" * 1025)
        at_once = await waf.send(head[:-1025], "shop.test")
        self.assertEqual(at_once.status, 413)
        chunked_head = (b"POST /notes HTTP/1.1\r\nHost: shop.test\r\nContent-Type: text/plain"
                        b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        passed = await waf.send(chunked_head + b"200\r\n" + b"a" * 512 + b"\r\n"
                                + b"201\r\n" + b"b" * 513 + b"\r\n", "shop.test")
        self.assertEqual(passed.status, 413)
        self.assertEqual(origin.received, [])
        exact = await waf.send(post("/notes", "shop.test", "text/plain", b"c" * 1024,
                                    chunked=True), "shop.test")
        self.assertEqual(exact.status, 200)
        image = await waf.send(post("/upload", "shop.test", "image/png", b"d" * 100_000),
                               "shop.test")
        self.assertEqual(image.status, 200)
        self.assertEqual([r.length for r in origin.received], [1024, 100_000])
        rows = await waf.logged([request_id(r) for r in (at_once, passed)])
        self.assertEqual([(r["status"], r["blocked"]) for r in rows], [(413, False)] * 2)

    async def until_limit(self, waf, limit: int, overflow: str = "inspect-prefix") -> None:
        site = waf.veil.edge.sites.get("shop.test")
        await until(lambda: (waf.veil.policies.get(site.id).inspect_body_limit,
                             waf.veil.policies.get(site.id).body_overflow) == (limit, overflow),
                    10.0, "the new body settings")


class StreamingTests(TestCase):
    """The WAF on does not cost streaming: 200 MiB each way in bounded memory."""

    timeout = 240

    async def test_200_mib_each_way(self) -> None:
        """
        A 200 MiB multipart upload (inspected on its prefix), a 200 MiB octet
        stream upload (not inspected) and a 200 MiB download (with a length
        and chunked) pass through a WAF-on site over TLS, intact, with the
        whole test process (client, Veil, origin) growing by less than 64 MiB.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        self.assertEqual(waf.veil.edge.sites.get("shop.test").max_body_size, 100 * 1024 * 1024)
        await waf.cli("sites", "set", "shop.test", "--max-body-size", "1G")
        await until(lambda: waf.veil.edge.sites.get("shop.test").max_body_size == 1 << 30,
                    10.0, "the new body size")
        size = 200 * 1024 * 1024
        piece = b"0123456789abcdef" * 4096
        digest = hashlib.sha256()
        for _ in range(size // len(piece)):
            digest.update(piece)
        preamble = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\";"
                    f" filename=\"holiday.bin\"\r\nContent-Type: application/octet-stream"
                    f"\r\n\r\n").encode()
        epilogue = f"\r\n--{BOUNDARY}--\r\n".encode()
        before = rss_kib()
        head = (f"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Type: {MULTIPART}\r\n"
                f"Content-Length: {len(preamble) + size + len(epilogue)}\r\n\r\n").encode()
        pieces = (piece for _ in range(size // len(piece)))
        response = await waf.send(head + preamble, "shop.test",
                                  pieces=_then(pieces, epilogue))
        self.assertEqual((response.status, response.body),
                         (200, b"%d" % (len(preamble) + size + len(epilogue))))
        head = (f"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Type: "
                f"application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode()
        response = await waf.send(head, "shop.test",
                                  pieces=(piece for _ in range(size // len(piece))))
        self.assertEqual((response.status, response.body), (200, b"%d" % size))
        self.assertEqual(origin.received[1].sha256, digest.hexdigest())
        for path in (f"/size/{size}", f"/chunked/{size}"):
            response = await waf.send(get(path, "shop.test"), "shop.test", keep_body=False)
            self.assertEqual((response.status, response.size), (200, size))
        growth = rss_kib() - before
        self.assertLess(growth, 64 * 1024, f"RSS grew by {growth} KiB")


def _then(pieces, last: bytes):
    yield from pieces
    yield last
