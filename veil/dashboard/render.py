"""
Pages and static files.

Templates are Jinja2 with autoescaping on for every template (attack
payloads are displayed: everything that reaches the page is escaped unless
a template marks it safe, which none does).  Undefined variables are
errors, not empty strings.  Static files (one CSS file, plain JavaScript,
an icon) are read from the package once, at start-up, and served from
memory under C{/static/NAME?v=HASH}: with a matching C{v} they may be
cached for a year, since the URL changes with the content.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import attrs
from jinja2 import Environment, PackageLoader, StrictUndefined

STATIC_TYPES = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}


@attrs.frozen
class StaticFile:
    name: str
    data: bytes
    content_type: bytes
    version: str

    @property
    def etag(self) -> bytes:
        return f'"{self.version}"'.encode("ascii")


def load_static() -> dict[str, StaticFile]:
    """Every file in the package's C{static} directory, by name."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("veil.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            data = entry.read_bytes()
            files[entry.name] = StaticFile(entry.name, data, STATIC_TYPES[suffix],
                                           hashlib.sha256(data).hexdigest()[:12])
    return files


def when(moment: datetime | str | None, missing: str = "never") -> str:
    """A moment for people, in UTC (the page's script shows it in local time)."""
    if moment is None:
        return missing
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_BROWSERS = (
    ("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
    ("HeadlessChrome/", "Headless Chrome"), ("Chromium/", "Chromium"), ("Chrome/", "Chrome"),
    ("Version/", "Safari"), ("curl/", "curl"), ("python-requests/", "Python requests"),
)
_SYSTEMS = (
    ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("CrOS", "ChromeOS"),
    ("Windows", "Windows"), ("Mac OS X", "macOS"), ("Linux", "Linux"),
)


def browser(user_agent: str | None) -> str:
    """A short name for a user agent: C{Firefox 128 on Linux}."""
    if not user_agent:
        return "Unknown browser"
    name = None
    for marker, label in _BROWSERS:
        found = re.search(re.escape(marker) + r"([0-9]+)", user_agent)
        if found is not None:
            name = f"{label} {found.group(1)}"
            break
    system = next((label for marker, label in _SYSTEMS if marker in user_agent), None)
    if name is None:
        return user_agent[:60]
    return f"{name} on {system}" if system else name


def sign_in_method(method: str) -> str:
    return {"password": "password", "github": "GitHub", "magic_link": "e-mail link",
            "setup": "first-run setup"}.get(method, method)


def iso(moment: datetime | str | None) -> str:
    if isinstance(moment, str):
        return moment
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def number(value: float | None) -> str:
    """A count for people: C{12,345}."""
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def milliseconds(value: float | None) -> str:
    """A duration: C{0.4 ms}, C{12 ms}, C{1.3 s}."""
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def percent(value: float | None) -> str:
    if value is None:
        return "—"
    shown = value * 100
    return f"{shown:.1f} %" if 0 < shown < 10 else f"{shown:.0f} %"


def size(value: int | None) -> str:
    """Bytes for people: C{512 B}, C{64 KiB}, C{100 MiB}."""
    if value is None:
        return "—"
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            amount = value / factor
            return f"{amount:.0f} {unit}" if amount >= 10 or amount == int(amount) \
                else f"{amount:.1f} {unit}"
    return f"{value} B"


_UUID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def short_id(text: Any) -> str:
    """Text with every UUID cut to its first eight characters (C{d3e01b0e…})."""
    return _UUID.sub(lambda m: m.group(1) + "…", str(text))


def detail(value: Any) -> str:
    """An audit row's detail on one line: C{key: value, ...} (the template escapes it)."""
    if not isinstance(value, dict) or not value:
        return ""
    import json

    parts = []
    for key, item in value.items():
        shown = item if isinstance(item, str) else json.dumps(item, default=str,
                                                              ensure_ascii=False)
        parts.append(f"{key}: {short_id(shown)}")
    text = ", ".join(parts)
    return text if len(text) <= 300 else text[:299] + "…"


def templates(static: dict[str, StaticFile]) -> Environment:
    """The template environment, with C{static(name)} and the date filters."""
    env = Environment(
        loader=PackageLoader("veil.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def static_url(name: str) -> str:
        return f"/static/{name}?v={static[name].version}"

    env.globals["static"] = static_url
    env.filters["when"] = when
    env.filters["iso"] = iso
    env.filters["browser"] = browser
    env.filters["sign_in_method"] = sign_in_method
    env.filters["number"] = number
    env.filters["ms"] = milliseconds
    env.filters["percent"] = percent
    env.filters["size"] = size
    env.filters["detail"] = detail
    env.filters["short_id"] = short_id
    return env


def render(env: Environment, name: str, context: dict[str, Any]) -> bytes:
    return env.get_template(name).render(context).encode("utf-8")
