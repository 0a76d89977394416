"""
Where a held-out case puts its payload: the request is built around it.

A case is (placement, payload) or (placement, payload, name).  The
placements:

    q          GET, the payload percent-encoded as a query argument
    qraw       GET, the payload written into the query as it is (already encoded)
    path       GET, the payload percent-encoded as the last path segment
    pathraw    GET, the payload written into the path as it is
    form       POST application/x-www-form-urlencoded, one field among others
    formraw    POST application/x-www-form-urlencoded, the body as it is
    json       POST application/json, one string field among others
    jsonraw    POST application/json, the body as it is
    xml        POST application/xml, the payload as an element's text
    xmlraw     POST application/xml (or text/xml), the body as it is
    multipart  POST multipart/form-data, one field among others
    filename   POST multipart/form-data, the payload as an uploaded file's name
    file       POST multipart/form-data, the payload as an uploaded file's content
    cookie     a cookie among others, percent-encoded where a cookie needs it
    header:N   the value of header N (User-Agent, Referer, X-Forwarded-For, ...)
"""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus
from xml.sax.saxutils import escape

BROWSERS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
     " Chrome/132.0.0.0 Safari/537.36"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko)"
     " Version/17.3 Safari/605.1.15"),
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:134.0) Gecko/20100101 Firefox/134.0",
    ("Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko)"
     " Chrome/131.0.0.0 Mobile Safari/537.36"),
]
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _headers(n: int, accept: str = ACCEPT_HTML) -> list[list[str]]:
    return [["User-Agent", BROWSERS[n % len(BROWSERS)]], ["Accept", accept],
            ["Accept-Language", "en-US,en;q=0.7"], ["Accept-Encoding", "gzip, deflate, br"]]


def _set(headers: list[list[str]], name: str, value: str) -> list[list[str]]:
    out = [h for h in headers if h[0].lower() != name.lower()]
    out.append([name, value])
    return out


def build(n: int, placement: str, payload: str, name: str, route: str) -> dict:
    """One request (the scorer's JSON-lines form, without id/kind/class)."""
    headers = _headers(n)
    method, path, body = "GET", route, None
    if placement == "q":
        path = f"{route}?{name}={quote(payload, safe='')}&page=1"
    elif placement == "qraw":
        path = f"{route}?{name}={payload}"
    elif placement == "path":
        path = f"{route.rstrip('/')}/{quote(payload, safe='')}"
    elif placement == "pathraw":
        path = payload if payload.startswith("/") else f"{route.rstrip('/')}/{payload}"
    elif placement == "form":
        method = "POST"
        body = f"csrf=Zk3x9Qp2Lm&{name}={quote_plus(payload)}&submit=Send"
        headers.append(["Content-Type", "application/x-www-form-urlencoded"])
    elif placement == "formraw":
        method, body = "POST", payload
        headers.append(["Content-Type", "application/x-www-form-urlencoded"])
    elif placement == "json":
        method = "POST"
        body = json.dumps({"requestId": 7731 + n, name: payload, "locale": "en"})
        headers = _set(headers, "Accept", "application/json")
        headers.append(["Content-Type", "application/json"])
    elif placement == "jsonraw":
        method, body = "POST", payload
        headers = _set(headers, "Accept", "application/json")
        headers.append(["Content-Type", "application/json; charset=utf-8"])
    elif placement == "xml":
        method = "POST"
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<request><{name}>{escape(payload)}'
                f"</{name}><lang>en</lang></request>")
        headers.append(["Content-Type", "application/xml"])
    elif placement == "xmlraw":
        method, body = "POST", payload
        headers.append(["Content-Type", "text/xml; charset=utf-8"])
    elif placement in ("multipart", "filename", "file"):
        method = "POST"
        boundary = f"----WebKitFormBoundary{n:04d}hEldOut7x"
        if placement == "multipart":
            parts = [("title", None, "Holiday photos"), (name, None, payload)]
        elif placement == "filename":
            parts = [("title", None, "Upload"), ("upload", payload, "GIF89a...")]
        else:
            parts = [("title", None, "Upload"), ("upload", f"{name}", payload)]
        chunks = []
        for field, filename, value in parts:
            disposition = f'form-data; name="{field}"'
            extra = ""
            if filename is not None:
                disposition += f'; filename="{filename}"'
                extra = "Content-Type: application/octet-stream\r\n"
            chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n"
                          f"{value}\r\n")
        body = "".join(chunks) + f"--{boundary}--\r\n"
        headers.append(["Content-Type", f"multipart/form-data; boundary={boundary}"])
    elif placement == "cookie":
        value = quote(payload, safe="!#$&'()*+-./:<=>?@[]^_`{|}~")
        headers.append(["Cookie", f"_ga=GA1.2.99120.17331; {name}={value}; theme=dark"])
    elif placement.startswith("header:"):
        headers = _set(headers, placement.split(":", 1)[1], payload)
    else:
        raise ValueError(f"unknown placement {placement!r}")
    row: dict = {"method": method, "path": path, "headers": headers}
    if body is not None:
        row["body"] = body
    return row
