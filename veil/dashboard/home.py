"""The signed-in home page: the caller's sites."""

from __future__ import annotations

from veil.dashboard import paging
from veil.dashboard.api.sites import sites_page
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.web import Call, Html, route, user_read

QUERY = Object({**paging.QUERY.fields, "done": String(max_length=20)})
DONE = {"site_removed": "The site is removed."}


class HomePage:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/", access=user_read(tokens=False), query=QUERY,
           summary="Home: the sites you can see")
    async def home(self, call: Call) -> Html:
        page = paging.Paging.from_query(call.query)
        rows, result = await sites_page(call, page)
        return call.render("home.html", sites=rows[:page.limit],
                           next_cursor=result["next_cursor"],
                           done=DONE.get(call.query.get("done", "")))
