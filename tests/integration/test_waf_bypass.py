"""
Ways around the WAF, tried against a running Veil with a recording origin:
an attack must never reach the origin uninspected, nor be inspected in a
form other than the one the origin receives.  Each test sends what an
attacker would (raw bytes on a real socket) and checks both the answer and
what the origin received.
"""

from __future__ import annotations

import gzip
import ssl
import zlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, talk
from tests.support.wafsite import (
    WafVeil,
    listen_recording_origin,
    post,
    request_id,
    start_wafveil,
)
from tests.support.waiting import until
from veil.waf import rawrequest

SQLI = b"1' OR 1=1--"
JSON_SQLI = b'{"name": "ann", "q": "' + SQLI + b'"}'
FORM_SQLI = b"name=ann&q=1%27%20OR%201%3D1--"
HEAD = b"Host: shop.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"


def raw_post(content_type: bytes, body: bytes, extra: bytes = b"",
             target: bytes = b"/api") -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\n" + HEAD + b"Content-Type: " + content_type
            + b"\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def raw_get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + HEAD + extra + b"\r\n"


def converse(waf: WafVeil, data: bytes, responses: int) -> Any:
    """Send C{data} on one TLS connection to shop.test; read C{responses} responses."""
    context = ssl.create_default_context(cafile=waf.cafile)

    def wrap(raw: Any) -> Any:
        return context.wrap_socket(raw, server_hostname="shop.test")
    return deferToThreadPool(reactor, waf.threads, talk, waf.port(), data, wrap=wrap,
                             responses=responses)


async def one(waf: WafVeil, data: bytes) -> Response:
    found, _ = await converse(waf, data, 1)
    assert found, "no response"
    return found[0]


class AmbiguousHeadTests(TestCase):
    """A head that different parsers read differently is refused, not guessed at."""

    timeout = 120

    async def test_two_content_types(self) -> None:
        """
        Two Content-Type headers (octet-stream first, which the WAF does not
        read, JSON second, which many frameworks take) are a 400: the JSON
        attack never reaches the origin.  C{veil waf check} refuses it too.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        for first, second, body in ((b"application/octet-stream", b"application/json",
                                     JSON_SQLI),
                                    (b"image/png", b"application/x-www-form-urlencoded",
                                     FORM_SQLI)):
            data = raw_post(first, body, b"Content-Type: " + second + b"\r\n")
            response = await one(waf, data)
            self.assertEqual(response.status, 400, second)
            with self.assertRaises(rawrequest.Refused) as refused:
                rawrequest.parse(data)
            self.assertEqual(refused.exception.status, 400)
        # One Content-Type is of course fine.
        response = await one(waf, raw_post(b"application/json", b'{"name": "ann"}'))
        self.assertEqual(response.status, 200)
        self.assertEqual([r.body for r in origin.received], [b'{"name": "ann"}'])


class EncodedBodyTests(TestCase):
    """
    A compressed request body (Content-Encoding) is inspected as the origin
    would read it once decompressed; one the WAF cannot read is not passed
    on unread.
    """

    timeout = 120

    async def test_compressed_attacks_blocked(self) -> None:
        """
        gzip, x-gzip, deflate (zlib and raw) and doubly gzipped bodies with
        an attack get 403; the origin sees none of them.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        raw = zlib.compressobj(wbits=-15)
        raw_deflated = raw.compress(FORM_SQLI) + raw.flush()
        cases = [
            (b"application/json", b"gzip", gzip.compress(JSON_SQLI)),
            (b"application/json", b"x-gzip", gzip.compress(JSON_SQLI)),
            (b"application/x-www-form-urlencoded", b"deflate", zlib.compress(FORM_SQLI)),
            (b"application/x-www-form-urlencoded", b"deflate", raw_deflated),
            (b"application/json", b"gzip, gzip", gzip.compress(gzip.compress(JSON_SQLI))),
            (b"application/json", b"GZIP", gzip.compress(JSON_SQLI)),
        ]
        ids = []
        for content_type, coding, body in cases:
            data = raw_post(content_type, body, b"Content-Encoding: " + coding + b"\r\n")
            response = await one(waf, data)
            self.assertEqual(response.status, 403, coding)
            ids.append(request_id(response))
            # veil waf check reads it as the proxy does.
            self.assertIn(rawrequest.parse(data).request().body, (JSON_SQLI, FORM_SQLI))
        self.assertEqual(origin.received, [])
        rows = await waf.logged(ids)
        self.assertEqual({(r["attack_type"], r["blocked"]) for r in rows}, {("sqli", True)})

    async def test_compressed_benign_forwarded_intact(self) -> None:
        """
        A benign gzip body reaches the origin as sent (still compressed); a
        decompression bomb is read only up to the inspection limit and
        forwarded whole.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        benign = gzip.compress(b'{"name": "ann", "bio": "I like O\'Reilly books"}')
        bomb = gzip.compress(b'{"pad": "' + b"a" * (20 * 1024 * 1024) + b'"}')
        for body in (benign, bomb):
            response = await one(waf, raw_post(b"application/json", body,
                                               b"Content-Encoding: gzip\r\n"))
            self.assertEqual(response.status, 200)
        self.assertEqual([r.body for r in origin.received], [benign, bomb])

    async def test_unreadable_encodings(self) -> None:
        """
        A body in an encoding the WAF cannot read (br, zstd, or corrupt
        gzip) is refused with 415 on a site in block mode, and forwarded but
        logged as suspicious on a site in monitor mode.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        await waf.add_site("watch.test", upstream)
        await waf.cli("sites", "set", "watch.test", "--mode", "monitor")
        cases = [(b"br", b"\x1b\x0f\x00\xf8\xa5\x0f\x00"), (b"zstd", b"(\xb5/\xfd\x00\x00"),
                 (b"gzip", b"\x1f\x8b\x08\x00garbage, not deflate data")]
        ids = []
        for coding, body in cases:
            data = raw_post(b"application/json", body, b"Content-Encoding: " + coding + b"\r\n")
            response = await one(waf, data)
            self.assertEqual(response.status, 415, coding)
            ids.append(request_id(response))
        self.assertEqual(origin.received, [])

        def watched(data: bytes) -> bytes:
            return data.replace(b"Host: shop.test", b"Host: watch.test")
        context = ssl.create_default_context(cafile=waf.cafile)
        for coding, body in cases:
            data = watched(raw_post(b"application/json", body,
                                    b"Content-Encoding: " + coding + b"\r\n"))
            found, _ = await deferToThreadPool(
                reactor, waf.threads, talk, waf.port(), data, responses=1,
                wrap=lambda s: context.wrap_socket(s, server_hostname="watch.test"))
            self.assertEqual(found[0].status, 200, coding)
            ids.append(request_id(found[0]))
        self.assertEqual([r.body for r in origin.received], [body for _, body in cases])
        rows = await waf.logged(ids)
        self.assertEqual([(r["classification"], r["blocked"]) for r in rows],
                         [("suspicious", True)] * 3 + [("suspicious", False)] * 3)


class ProfileTests(TestCase):
    """A C{skip} endpoint profile cannot be reached by a path that the origin resolves elsewhere."""

    timeout = 120

    async def test_skip_by_dot_segments(self) -> None:
        """
        With C{/static/*} skipped, C{/static/x?q=ATTACK} passes as the
        operator asked; C{/api/../static/x}, C{/api/..;/static/x} and
        C{/api/%2e%2e/static/x} (which the WAF resolves to C{/static/x}
        but an origin that routes the raw path sends to C{/api}) are
        inspected and blocked.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        await waf.cli("waf", "profile", "shop.test", "/static/*", "--mode", "skip")
        attack = b"?q=1%27%20OR%201=1--"
        response = await one(waf, raw_get(b"/static/x" + attack))
        self.assertEqual(response.status, 200)
        for path in (b"/api/../static/x", b"/api/..;/static/x", b"/api/%2e%2e/static/x",
                     b"/api/%2E%2E%2Fstatic/x", b"/api\\..\\static/x"):
            response = await one(waf, raw_get(path + attack))
            self.assertEqual(response.status, 403, path)
        self.assertEqual([r.target for r in origin.received], [b"/static/x" + attack])


class BudgetTests(TestCase):
    """A body the proxy cannot hold for inspection (the body budget is spent) is not passed unread."""

    timeout = 120

    async def test_spent_budget(self) -> None:
        """
        With the body budget held by a pipelined request waiting behind a
        slow one, an attack body arriving meanwhile is answered 503 (block
        mode) instead of being inspected on an empty prefix and streamed;
        on a monitor site it is forwarded and logged as suspicious.
        """
        waf = await start_wafveil(self, VEIL_PROXY_BODY_BUDGET="65536")
        origin, upstream = listen_recording_origin(self)
        origin.slow_delay = 60.0
        await waf.add_site("shop.test", upstream)
        await waf.add_site("watch.test", upstream)
        await waf.cli("sites", "set", "watch.test", "--mode", "monitor")
        budget = waf.veil.edge._router.proxy.budget
        holder = raw_get(b"/slow") + (
            b"POST /api HTTP/1.1\r\n" + HEAD + b"Content-Type: text/plain\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"a" * 70000)
        # The holder's connection stays open until the slow response comes.
        held = converse(waf, holder, 1)
        await until(lambda: budget.spent, 20.0, "the body budget spent")
        response = await one(waf, raw_post(b"application/json", JSON_SQLI))
        self.assertEqual(response.status, 503)
        self.assertIsNotNone(response.header(b"retry-after"))
        blocked_id = request_id(response)
        watched = raw_post(b"application/json", JSON_SQLI).replace(b"Host: shop.test",
                                                                   b"Host: watch.test")
        context = ssl.create_default_context(cafile=waf.cafile)
        found, _ = await deferToThreadPool(
            reactor, waf.threads, talk, waf.port(), watched, responses=1,
            wrap=lambda s: context.wrap_socket(s, server_hostname="watch.test"))
        self.assertEqual(found[0].status, 200)
        self.assertEqual([r.target for r in origin.received if r.target == b"/api"], [b"/api"])
        rows = await waf.logged([blocked_id, request_id(found[0])])
        self.assertEqual((rows[0]["classification"], rows[0]["blocked"]), ("suspicious", True))
        self.assertIn(rows[1]["classification"], ("suspicious", "malicious"))
        self.assertFalse(rows[1]["blocked"])
        for call in origin.delayed:
            call.reset(0)  # the slow response now: then the holder's client hangs up
        responses, _ = await held
        self.assertEqual(responses[0].status, 200)


class RegressionTests(TestCase):
    """Tricks that the WAF already sees through, kept so that they stay seen through."""

    timeout = 120

    async def test_already_caught(self) -> None:
        """
        Each of these carries an attack and gets 403 without the origin
        seeing it: a pipelined second request's body; a body in one-byte
        chunks with chunk extensions; Expect: 100-continue; JSON with a
        charset, upper case, a parameter or a +json type; JSON or a form
        with no Content-Type or as text/plain; multipart with a quoted
        boundary, a filename*=, a nested part, a part header folded over
        two lines and a part without Content-Disposition; a WebSocket upgrade with
        the attack in its query; attacks in Referer, X-Forwarded-For,
        Origin, custom headers and cookies, and at the end of a long value.
        """
        waf = await start_wafveil(self)
        origin, upstream = listen_recording_origin(self)
        await waf.add_site("shop.test", upstream)
        found, _ = await converse(waf, raw_post(b"application/json", b'{"q": "ok"}')
                                  + raw_post(b"application/json", JSON_SQLI), 2)
        self.assertEqual([r.status for r in found], [200, 403])
        self.assertEqual([r.body for r in origin.received], [b'{"q": "ok"}'])
        chunked = b"".join(b"1;ext=\"a;b\"\r\n%c\r\n" % c for c in JSON_SQLI) + b"0\r\n\r\n"
        boundary = b"b0und"
        attacks = [
            b"POST /api HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked,
            raw_post(b"application/json", JSON_SQLI, b"Expect: 100-continue\r\n"),
            raw_post(b"application/json; charset=utf-8", JSON_SQLI),
            raw_post(b"APPLICATION/JSON", JSON_SQLI),
            raw_post(b"application/json; x=y", JSON_SQLI),
            raw_post(b"application/vnd.api+json", JSON_SQLI),
            raw_post(b"text/plain", JSON_SQLI),
            raw_post(b"text/plain", FORM_SQLI),
            post("/api", "shop.test", None, JSON_SQLI),
            post("/api", "shop.test", None, FORM_SQLI),
            raw_post(b'multipart/form-data; boundary="b0und"',
                     b"--b0und\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n" + SQLI
                     + b"\r\n--b0und--\r\n"),
            raw_post(b"multipart/form-data; boundary=" + boundary,
                     b"--b0und\r\nContent-Disposition: form-data; name=\"f\"; "
                     b"filename*=UTF-8''a%27%20OR%201%3D1--.txt\r\n\r\nhi\r\n--b0und--\r\n"),
            raw_post(b"multipart/form-data; boundary=" + boundary,
                     b"--b0und\r\nContent-Disposition: form-data; name=\"files\"\r\n"
                     b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n--inner\r\n"
                     b"Content-Disposition: file; filename=\"a.txt\"\r\n\r\n" + SQLI
                     + b"\r\n--inner--\r\n--b0und--\r\n"),
            raw_post(b"multipart/form-data; boundary=" + boundary,
                     b"--b0und\r\nContent-Disposition: form-data;\r\n name=\"q\"\r\n\r\n"
                     + SQLI + b"\r\n--b0und--\r\n"),
            raw_post(b"multipart/form-data; boundary=" + boundary,
                     b"--b0und\r\nContent-Type: text/plain\r\n\r\n" + SQLI
                     + b"\r\n--b0und--\r\n"),
            raw_get(b"/ws?q=1%27%20OR%201=1--", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n"),
            raw_get(b"/", b"Referer: https://shop.test/?q=1%27%20OR%201=1--\r\n"),
            raw_get(b"/", b"X-Forwarded-For: 1' OR 1=1--\r\n"),
            raw_get(b"/", b"Origin: <script>alert(1)</script>\r\n"),
            raw_get(b"/", b"X-Api-Filter: 1' OR 1=1--\r\n"),
            raw_get(b"/", b'Cookie: a=b; q="1\' OR 1=1--"\r\n'),
            raw_get(b"/?q=" + b"a" * 6000 + b"%27%20OR%201=1--"),
            raw_post(b"application/json", b'{"q": "' + b"a " * 20000 + SQLI + b'"}'),
        ]
        for data in attacks:
            response = await one(waf, data)
            self.assertEqual(response.status, 403, data[:120])
        self.assertEqual(len(origin.received), 1)
