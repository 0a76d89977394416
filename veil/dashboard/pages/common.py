"""What the site pages share: the site, its tabs, and forms (their state and errors)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import attrs

from veil.dashboard.web import ROLES, Call, Html, HttpError, NavItem, not_found

#: The tabs of a site's pages: (key, label, path under /sites/<id>, weakest role).
TABS = (
    ("overview", "Overview", "", "viewer"),
    ("requests", "Requests", "/requests", "viewer"),
    ("dns", "DNS & status", "/dns", "viewer"),
    ("decisions", "Decisions", "/decisions", "viewer"),
    ("waf", "WAF", "/waf", "viewer"),
    ("settings", "Settings", "/settings", "admin"),
    ("members", "Members", "/members", "admin"),
    ("activity", "Activity", "/activity", "admin"),
)


@attrs.frozen
class Rights:
    """What the caller's role on a site allows, for the templates."""

    role: str

    @property
    def write(self) -> bool:
        return ROLES.index(self.role) >= ROLES.index("admin")

    @property
    def manage_members(self) -> bool:
        return self.role == "owner"


async def render_site(call: Call, template: str, tab: str, status: int = 200,
                      site: Any = None, **context: Any) -> Html:
    """A site page: the site (with every setting), its tabs and the caller's rights."""
    access = call.site
    assert access is not None and access.role is not None
    if site is None:
        site = await call.services.sites.detail(access.id)
        if site is None:
            raise not_found()
    rights = Rights(access.role)
    tabs = [NavItem(label, f"/sites/{site.id}{path}") for key, label, path, role in TABS
            if ROLES.index(access.role) >= ROLES.index(role)]
    current = next(f"/sites/{site.id}{path}" for key, _, path, _ in TABS if key == tab)
    return call.render(template, status=status, site=site, rights=rights, tabs=tabs,
                       current_tab=current, **context)


def field_errors(error: HttpError) -> dict[str, str]:
    """The messages by field of a validation error (or the message under C{(form)})."""
    detail = error.detail if isinstance(error.detail, dict) else {}
    fields = detail.get("fields") or []
    found = {f["field"]: f["message"] for f in fields if isinstance(f, dict)}
    return found or {"(form)": error.message}


T = TypeVar("T")


def form_fields(call: Call) -> dict[str, str]:
    """The posted form's fields, as text."""
    return {k: str(v) for k, v in (call.body or {}).items()}


def form_state(call: Call, context: dict[str, Any], blank: Mapping[str, Any],
               done: Mapping[str, str]) -> None:
    """
    What a page with a form shows unless told otherwise: no errors, the
    C{blank} form, and the notice the C{?done=} of a redirect names.
    """
    context.setdefault("errors", {})
    context.setdefault("form", dict(blank))
    context.setdefault("notice", done.get(call.query.get("done", "")))


async def attempt(action: Awaitable[T],
                  statuses: tuple[int, ...] = (422,)) -> tuple[T | None, dict[str, str]]:
    """
    Await a form's C{action}; a refusal with one of C{statuses} comes back as
    its messages by field (L{field_errors}) instead of an error page.
    """
    try:
        return await action, {}
    except HttpError as e:
        if e.status not in statuses:
            raise
        return None, field_errors(e)


def form_errors(call: Call) -> dict[str, str]:
    """The framework's messages for an invalid form (C{call.invalid})."""
    if call.invalid is None:
        return {}
    return {e.field: e.message for e in call.invalid.errors}


def text(value: Any) -> str | None:
    """A form's text field: stripped, L{None} when empty."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None
