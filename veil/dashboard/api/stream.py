"""
C{GET /api/v1/stream?site_id=…}: the live stream of a site's requests, as
Server-Sent Events (L{veil.live.sse}; mounted by L{veil.dashboard.live}).
"""

from __future__ import annotations

from veil.dashboard.schema import Object, Response, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import Call, Delegate, Raw, route, site_read

STREAM_QUERY = Object({
    "site_id": Uuid(description="the site to watch"),
    "after": String(max_length=80, description="resume after this event id (as the"
                    " Last-Event-ID header does)"),
}, required=("site_id",))


class StreamApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/stream", access=site_read("viewer", site_from="query"),
           query=STREAM_QUERY, idle_refresh=False, streams=True,
           summary="Every request of a site as it happens (Server-Sent Events)",
           description="First a hydrate event with the most recent rows, then a request event"
                       " per request; id: is the position to resume from (Last-Event-ID, or"
                       " ?after=); a gap event when rows may be missing (a new hydrate"
                       " follows); end when the stream is over (revoked: do not reconnect);"
                       " a keep-alive comment every 15 s. At most 8 streams per user.",
           responses=[Response(200, "the event stream", content_type="text/event-stream"),
                      Response(429, "too many streams; see Retry-After")])
    def stream(self, call: Call) -> Delegate | Raw:
        live = self.services.need("live")
        if call.request.method == b"HEAD":
            return Raw(b"", b"text/event-stream; charset=utf-8")
        return Delegate(live.open(call))
