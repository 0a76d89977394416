"""
The dashboard's HTTP hygiene, over real HTTP on loopback: the security
headers and request id on every response of every route in the route
table, the JSON error shape, size and type limits, validation errors, the
500 for a bug, and the OpenAPI description made from the same table.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support.dashboard import Browser, Running, start_dashboard
from veil.dashboard.dashboard import HARD_BODY_LIMIT
from veil.dashboard.schema import Integer, Object, String
from veil.dashboard.web import ANONYMOUS, Call, RouteSpec, route, user_read, user_write

#: Header values every dashboard response carries.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


class Probe:
    """Test-only routes: a bug, a small body limit, a validated JSON body and query."""

    @route("GET", "/api/v1/test/boom", access=ANONYMOUS, summary="Raises")
    def boom(self, call: Call) -> Any:
        raise RuntimeError("a bug with a secret: hunter2")

    @route("POST", "/api/v1/test/echo", access=user_write(), max_body=200,
           body=Object({"name": String(min_length=1, max_length=10),
                        "count": Integer(minimum=1, maximum=5)}, required=("name",)),
           summary="Echoes a validated body")
    def echo(self, call: Call) -> Any:
        return {"body": call.body}

    @route("GET", "/api/v1/test/query", access=user_read(),
           query=Object({"n": Integer(minimum=1, maximum=3)}), summary="Echoes a query")
    def query(self, call: Call) -> Any:
        return {"query": call.query}


def concrete_path(spec: RouteSpec) -> str:
    """A path for the route with made-up parameters."""
    values = {}
    for name, converter in spec.parameters():
        values[name] = {"uuid": uuid.uuid4(), "int": 1}.get(converter, "x")
    return spec.concrete(values)


def check_headers(testcase: TestCase, reply: Any, what: str, secure: bool = False) -> None:
    csp = reply.header("content-security-policy") or ""
    testcase.assertIn("default-src 'self'", csp, what)
    testcase.assertIn("frame-ancestors 'none'", csp, what)
    testcase.assertIn("script-src 'self'", csp, what)
    testcase.assertNotIn("unsafe-inline", csp, what)
    testcase.assertNotIn("unsafe-eval", csp, what)
    for name, value in SECURITY_HEADERS.items():
        testcase.assertEqual(reply.header(name), value, f"{what}: {name}")
    testcase.assertIn(reply.header("referrer-policy"), ("same-origin", "no-referrer"), what)
    testcase.assertRegex(reply.header("x-request-id") or "", r"^[0-9a-f]{32}$", what)
    if secure:
        testcase.assertIn("max-age=31536000", reply.header("strict-transport-security") or "",
                          what)
    else:
        testcase.assertIsNone(reply.header("strict-transport-security"), what)


class HeadersTests(TestCase):
    """Every response of every route carries the security headers and a request id."""

    timeout = 120

    async def test_every_route(self) -> None:
        """
        Walk the whole route table, signed in and not, with each route's
        method (plus a HEAD for GETs), and 404, 405 and 413: every answer,
        whatever its status, has the headers, and request ids differ.
        """
        running = await start_dashboard(self, extra_groups=[Probe()])
        await running.user("admin@example.com", admin=True)
        signed_in = await running.sign_in("admin@example.com")
        anonymous = running.browser()
        ids = set()
        count = 0
        for entry in running.dashboard.routes:
            spec = entry.spec
            path = concrete_path(spec)
            for browser in (anonymous, signed_in):
                methods = [spec.method] + (["HEAD"] if spec.method == "GET" else [])
                for method in methods:
                    reply = await browser.request(method, path, headers={"Accept": "*/*"})
                    check_headers(self, reply, f"{method} {path} -> {reply.code}")
                    ids.add(reply.header("x-request-id"))
                    count += 1
        extra = [("GET", "/no/such/page"), ("DELETE", "/login"), ("GET", "/api/v1/nothing")]
        for method, path in extra:
            reply = await signed_in.request(method, path)
            check_headers(self, reply, f"{method} {path}")
            ids.add(reply.header("x-request-id"))
            count += 1
        self.assertEqual(len(ids), count)
        # The probe's deliberate bug, once per browser and method.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 4)

    async def test_no_store_and_static_caching(self) -> None:
        """Pages are no-store; a versioned static file may be cached for a year, with an ETag."""
        running = await start_dashboard(self)
        browser = running.browser()
        page = await browser.get("/login")
        self.assertEqual(page.header("cache-control"), "no-store")
        css = running.dashboard.static["dashboard.css"]
        versioned = await browser.get(f"/static/dashboard.css?v={css.version}")
        self.assertEqual(versioned.code, 200)
        self.assertEqual(versioned.header("content-type"), "text/css; charset=utf-8")
        self.assertIn("immutable", versioned.header("cache-control"))
        self.assertEqual(versioned.body, css.data)
        check_headers(self, versioned, "static")
        stale = await browser.get("/static/dashboard.css?v=old")
        self.assertEqual(stale.header("cache-control"), "no-cache")
        again = await browser.get("/static/dashboard.css", headers={
            "If-None-Match": versioned.header("etag")})
        self.assertEqual((again.code, again.body), (304, b""))
        missing = await browser.get("/static/nothing.js")
        self.assertEqual(missing.code, 404)

    async def test_pages_reference_only_this_origin(self) -> None:
        """The pages load nothing from elsewhere and carry no inline script or style."""
        running = await start_dashboard(self)
        await running.user("admin@example.com", admin=True)
        browser = await running.sign_in("admin@example.com")
        for path in ("/", "/account"):
            text = (await browser.get(path)).text
            self.assertNotRegex(text, r"(src|href)=\"(https?:)?//")
            self.assertNotRegex(text, r"<script(?![^>]*\bsrc=)")
            self.assertNotIn("<style", text)
            self.assertNotIn(" style=", text)
            self.assertNotRegex(text, r" on[a-z]+=")


class ErrorTests(TestCase):
    """Errors are JSON with code, message, detail and the request id, and the right status."""

    timeout = 60

    async def _start(self) -> tuple[Running, Browser]:
        running = await start_dashboard(self, extra_groups=[Probe()])
        await running.user("user@example.com")
        return running, await running.sign_in("user@example.com")

    def assertError(self, reply: Any, status: int, code: str) -> dict:
        self.assertEqual(reply.code, status, reply.text)
        self.assertEqual(reply.header("content-type"), "application/json")
        body = reply.json()
        self.assertEqual(set(body), {"error", "request_id"})
        self.assertEqual(set(body["error"]), {"code", "message", "detail"})
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"])
        self.assertEqual(body["request_id"], reply.header("x-request-id"))
        return body

    async def test_not_found_and_method(self) -> None:
        """An unknown API path is a JSON 404; a wrong method is 405 with Allow."""
        _, browser = await self._start()
        self.assertError(await browser.api("GET", "/api/v1/nothing"), 404, "not_found")
        reply = await browser.api("PUT", "/api/v1/me", {})
        self.assertError(reply, 405, "method_not_allowed")
        self.assertIn("GET", reply.header("allow"))

    async def test_browser_gets_a_page(self) -> None:
        """A browser asking for a missing page gets an HTML error page with the request id."""
        _, browser = await self._start()
        reply = await browser.get("/no/such/page")
        self.assertEqual(reply.code, 404)
        self.assertEqual(reply.header("content-type"), "text/html; charset=utf-8")
        self.assertIn(reply.header("x-request-id"), reply.text)

    async def test_unexpected_exception(self) -> None:
        """A bug is a 500 naming the request id, logged with its traceback, its text not shown."""
        _, browser = await self._start()
        reply = await browser.api("GET", "/api/v1/test/boom")
        body = self.assertError(reply, 500, "internal_error")
        self.assertIn(body["request_id"], body["error"]["message"])
        self.assertNotIn("hunter2", reply.text)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_validation(self) -> None:
        """A body that breaks its declaration is a 422 listing every field at fault."""
        _, browser = await self._start()
        reply = await browser.api("POST", "/api/v1/test/echo",
                                  {"count": "3", "extra": 1})
        body = self.assertError(reply, 422, "validation_failed")
        fields = {f["field"]: f["code"] for f in body["error"]["detail"]["fields"]}
        self.assertEqual(fields, {"name": "required", "count": "type", "extra": "unknown"})
        ok = await browser.api("POST", "/api/v1/test/echo", {"name": " bob ", "count": 2})
        self.assertEqual((ok.code, ok.json()), (200, {"body": {"name": "bob", "count": 2}}))
        too_long = await browser.api("POST", "/api/v1/test/echo", {"name": "x" * 11})
        self.assertEqual(self.assertError(too_long, 422, "validation_failed")
                         ["error"]["detail"]["fields"][0]["code"], "too_long")

    async def test_query_validation(self) -> None:
        """A bad query parameter is a 400 with the field."""
        _, browser = await self._start()
        body = self.assertError(await browser.api("GET", "/api/v1/test/query?n=9"), 400,
                                "validation_failed")
        self.assertEqual(body["error"]["detail"]["fields"][0]["field"], "n")
        ok = await browser.api("GET", "/api/v1/test/query?n=2")
        self.assertEqual(ok.json(), {"query": {"n": 2}})

    async def test_malformed_json_and_type(self) -> None:
        """Broken JSON is 400; a JSON route refuses other content types with 415; arrays are 422."""
        _, browser = await self._start()
        self.assertError(await browser.request(
            "POST", "/api/v1/test/echo", data=b'{"name": ',
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "X-CSRF-Token": browser.csrf}), 400, "invalid_json")
        self.assertError(await browser.request(
            "POST", "/api/v1/test/echo", data=b"name=x",
            headers={"Content-Type": "text/plain", "Accept": "application/json",
                     "X-CSRF-Token": browser.csrf}), 415, "unsupported_media_type")
        self.assertError(await browser.request(
            "POST", "/api/v1/test/echo", data=b"name=x",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json", "X-CSRF-Token": browser.csrf}),
            415, "unsupported_media_type")
        self.assertError(await browser.request(
            "POST", "/api/v1/test/echo", data=b"[1, 2]",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "X-CSRF-Token": browser.csrf}), 422, "validation_failed")

    async def test_body_limits(self) -> None:
        """
        A body over the route's limit is 413; a body over the dashboard's
        hard limit is 413 before any route runs, and is never kept.
        """
        _, browser = await self._start()
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "X-CSRF-Token": browser.csrf}
        big = json.dumps({"name": "x" * 300}).encode()
        self.assertError(await browser.request("POST", "/api/v1/test/echo", data=big,
                                               headers=headers), 413, "body_too_large")
        huge = b"{" + b" " * (HARD_BODY_LIMIT + 10) + b"}"
        self.assertError(await browser.request("POST", "/api/v1/test/echo", data=huge,
                                               headers=headers), 413, "body_too_large")
        self.assertError(await browser.request("POST", "/login", data=huge, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*"}),
            413, "body_too_large")


class OpenApiTests(TestCase):
    """The OpenAPI description is generated from the route table."""

    timeout = 60

    async def test_every_api_route_described(self) -> None:
        """Each API route appears with its method, parameters, body and error responses."""
        running = await start_dashboard(self, extra_groups=[Probe()])
        reply = await running.browser().api("GET", "/api/v1/openapi.json")
        self.assertEqual(reply.code, 200)
        doc = reply.json()
        self.assertTrue(doc["openapi"].startswith("3."))
        for entry in running.dashboard.routes:
            spec = entry.spec
            if not spec.api:
                continue
            path = spec.path.replace("<uuid:", "{").replace("<", "{").replace(">", "}")
            operation = doc["paths"][path][spec.method.lower()]
            self.assertEqual(operation["summary"], spec.summary)
            for name, _ in spec.parameters():
                self.assertIn(name, [p["name"] for p in operation["parameters"]])
        echo = doc["paths"]["/api/v1/test/echo"]["post"]
        schema = echo["requestBody"]["content"]["application/json"]["schema"]
        self.assertEqual(schema["required"], ["name"])
        self.assertEqual(schema["properties"]["count"], {"type": "integer", "minimum": 1,
                                                         "maximum": 5})
        self.assertIn("422", echo["responses"])
        membership = doc["paths"]["/api/v1/sites/{site_id}/membership"]["get"]
        self.assertIn("404", membership["responses"])
        self.assertEqual(membership["parameters"][0]["schema"], {"type": "string",
                                                                 "format": "uuid"})
        self.assertNotIn("/login", doc["paths"])

