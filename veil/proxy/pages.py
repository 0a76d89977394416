"""
The small HTML pages the proxy answers itself: no external assets, no
scripts.  Static pages are rendered once at import; the others take the
few values they show (escaped).
"""

from __future__ import annotations

import html

REASONS = {
    101: b"Switching Protocols", 200: b"OK", 308: b"Permanent Redirect", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    421: b"Misdirected Request", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    508: b"Loop Detected",
}


def _page(title: str, *paragraphs: str) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>{title}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;"
        "padding:0 1em;color:#222}h1{font-size:1.4em}code{background:#eee;padding:0 .2em}"
        f"</style></head>\n<body><h1>{title}</h1>{body}"
        "<p><small>Veil</small></p></body></html>\n"
    ).encode()


def _esc(value: str) -> str:
    return html.escape(value, quote=True)


def _with_id(request_id: str) -> str:
    return f"Request id: <code>{_esc(request_id)}</code>"


NOT_FOUND = _page("No site here", "No site is configured for this host name.")
MISDIRECTED = _page("Misdirected request",
                    "This connection cannot serve requests for that host name.")
BAD_REQUEST = _page("Bad request", "The request was malformed and has been refused.")
URI_TOO_LONG = _page("Request target too long", "The request's URL is too long.")
HEADERS_TOO_LARGE = _page("Request headers too large",
                          "The request's headers are too many or too large.")
REQUEST_TIMEOUT = _page("Request timeout", "The request's body did not arrive in time.")
METHOD_NOT_ALLOWED = _page("Method not allowed", "This site does not accept that method.")
TOO_LARGE = _page("Request too large", "The request's body is larger than this site accepts.")
LOOP = _page("Loop detected", "This request has already passed through this server: the "
             "site's origin points back at it.")


def moved(location: str) -> bytes:
    return _page("Moved", f'This site is served at <a href="{_esc(location)}">'
                 f"{_esc(location)}</a>.")


def maintenance(domain: str) -> bytes:
    return _page("Down for maintenance",
                 f"{_esc(domain)} is down for maintenance. Please try again shortly.")


def setup(domain: str, status: str) -> bytes:
    return _page("Site not live yet",
                 f"DNS for <code>{_esc(domain)}</code> is not verified yet.",
                 "Point the domain's DNS records at this server; the site goes live "
                 "once Veil has verified them.",
                 f"Site status: <code>{_esc(status)}</code>")


def blocked(request_id: str) -> bytes:
    return _page("Access denied", "This request was blocked by the site's firewall.",
                 _with_id(request_id))


def throttled(request_id: str) -> bytes:
    return _page("Too many requests", "Slow down, then try again.", _with_id(request_id))


def unreadable(request_id: str) -> bytes:
    return _page("Unsupported content encoding", "The site's firewall cannot read this "
                 "request's body in the encoding it was sent in.", _with_id(request_id))


def inspection_busy(request_id: str) -> bytes:
    return _page("Busy", "The site's firewall is holding as many request bodies as it may; "
                 "please try again shortly.", _with_id(request_id))


def bad_gateway(request_id: str) -> bytes:
    return _page("Bad gateway", "The site's origin server could not be reached or "
                 "answered incorrectly.", _with_id(request_id))


def origin_busy(request_id: str) -> bytes:
    return _page("Origin busy", "The site's origin server is handling as many requests as it "
                 "may; please try again shortly.", _with_id(request_id))


def gateway_timeout(request_id: str) -> bytes:
    return _page("Gateway timeout", "The site's origin server did not answer in time.",
                 _with_id(request_id))


def internal_error(request_id: str) -> bytes:
    return _page("Internal error", "Veil failed to handle this request.",
                 _with_id(request_id))
