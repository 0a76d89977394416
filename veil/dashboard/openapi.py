"""
The OpenAPI 3 description of C{/api/v1}, generated from the route table:
each API route's method, path, parameters, body and responses come from
its declaration (L{veil.dashboard.web.route}), so the description cannot
drift from what the server does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from veil import __version__
from veil.dashboard.schema import ERROR
from veil.dashboard.web import RouteSpec

if TYPE_CHECKING:
    from veil.dashboard.dashboard import Dashboard

_CONVERTERS = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "default": {"type": "string"},
    "string": {"type": "string"},
    "path": {"type": "string"},
}

_ERRORS = {
    400: "malformed request (bad JSON, bad query)",
    401: "not signed in, or the API token is not valid",
    403: "not allowed (role, read-only token, CSRF)",
    404: "no such thing, or a site the caller may not see",
    413: "the body is too large",
    415: "the body is not application/json",
    422: "the body's fields are not valid",
    429: "too many attempts; see Retry-After",
    503: "Veil is starting or its database does not answer",
}


def _openapi_path(path: str) -> str:
    return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", path)


def _access_text(spec: RouteSpec) -> str:
    access = spec.access
    if access.who == "anonymous":
        return "No authentication."
    who = {"user": "Any signed-in user", "admin": "Global administrators",
           "site": f"Members of the site with role {access.role} or above"}[access.who]
    tokens = "" if access.tokens else " Not with API tokens: sign in to the dashboard."
    return f"{who} ({access.mode}).{tokens}"


def _operation(spec: RouteSpec) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": spec.summary,
        "description": " ".join(p for p in (spec.description, _access_text(spec)) if p),
        "operationId": f"{spec.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', spec.path).strip('_')}",
        "tags": list(spec.tags) or [spec.path.split("/")[3] if spec.path.count("/") >= 3 else "api"],
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": dict(_CONVERTERS.get(converter, {"type": "string"}))}
        for name, converter in spec.parameters()
    ]
    if spec.query is not None:
        parameters.extend(spec.query.parameters())
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": spec.body.schema()}}}
    responses: dict[str, Any] = {}
    for response in spec.responses:
        entry: dict[str, Any] = {"description": response.description}
        if response.body is not None:
            entry["content"] = {response.content_type: {"schema": response.body.schema()}}
        elif response.content_type != "application/json":
            entry["content"] = {response.content_type: {"schema": {"type": "string"}}}
        responses[str(response.status)] = entry
    if not responses:
        responses["200"] = {"description": "success"}
    statuses = {401, 403, 503} if spec.access.who != "anonymous" else {503}
    if spec.access.who == "site":
        statuses.add(404)
    if spec.body is not None or spec.write:
        statuses |= {400, 413, 415, 422}
    if spec.query is not None:
        statuses.add(400)
    for status in sorted(statuses):
        responses.setdefault(str(status), {"description": _ERRORS[status],
                                           "content": {"application/json": {
                                               "schema": {"$ref": "#/components/schemas/Error"}}}})
    operation["responses"] = responses
    if spec.access.who == "anonymous":
        operation["security"] = []
    elif not spec.access.tokens:
        operation["security"] = [{"session": []}]
    return operation


def describe(dashboard: Dashboard) -> dict[str, Any]:
    """The OpenAPI document for the dashboard's API routes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in dashboard.routes:
        spec = route.spec
        if not spec.api:
            continue
        paths.setdefault(_openapi_path(spec.path), {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Veil dashboard API", "version": __version__,
                 "description": "Errors are {\"error\": {\"code\", \"message\", \"detail\"},"
                                " \"request_id\"}. Writes with a session cookie need the"
                                " X-CSRF-Token header; API tokens need none."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR.schema()},
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "An API token (veil_pat_...)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-veil_session",
                            "description": "The dashboard's session (veil_session over"
                                           " plain HTTP)"},
            },
        },
        "security": [{"token": []}, {"session": []}],
    }
