"""
The dashboard's handler groups and header links, in one place.

A new group of routes is a class with L{veil.dashboard.web.route} methods;
add an instance here (one line) and, for a page reachable from the header,
a L{NavItem}.
"""

from __future__ import annotations

from veil.dashboard.account import AccountPages
from veil.dashboard.api.account import AccountApi
from veil.dashboard.api.admin import AdminApi
from veil.dashboard.api.decisions import DecisionsApi
from veil.dashboard.api.members import MembersApi
from veil.dashboard.api.requests import RequestsApi
from veil.dashboard.api.sites import SitesApi
from veil.dashboard.api.stream import StreamApi
from veil.dashboard.api.waf import WafApi
from veil.dashboard.home import HomePage
from veil.dashboard.pages.admin import AdminPages
from veil.dashboard.pages.members import MemberPages
from veil.dashboard.pages.protection import ProtectionPages
from veil.dashboard.pages.sites import SitePages
from veil.dashboard.pages.traffic import TrafficPages
from veil.dashboard.services import Services
from veil.dashboard.signin import SignInPages
from veil.dashboard.web import NavItem

NAV = (
    NavItem("Sites", "/"),
    NavItem("Users", "/admin/users", admin=True),
    NavItem("Audit log", "/admin/audit", admin=True),
)


def groups(services: Services) -> list[object]:
    return [
        SignInPages(services),
        HomePage(services),
        AccountPages(services),
        AccountApi(services),
        SitesApi(services),
        MembersApi(services),
        DecisionsApi(services),
        WafApi(services),
        RequestsApi(services),
        AdminApi(services),
        StreamApi(services),
        SitePages(services),
        TrafficPages(services),
        ProtectionPages(services),
        MemberPages(services),
        AdminPages(services),
    ]
