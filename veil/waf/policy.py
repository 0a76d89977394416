"""
A site's WAF policy: what the signature stage (DESIGN §6, stages 3-5) is
told about a site.

These records are the contract between the store (which loads them from the
C{sites}, C{rules} and C{endpoint_profiles} tables and keeps them current
through NOTIFY) and the engine (which applies them to every request).  They
are plain frozen values: the engine reads them on the hot path, the store
builds new ones and swaps them in whole.

Target names
============

A I{target} is one value the engine inspects, named C{collection:name}:

    method                 the request method
    path                   the normalised path (percent-decoded, dot segments
                           and repeated slashes resolved)
    uri                    the raw request target as received
    args:NAME              a query, form, multipart or JSON argument's value;
                           JSON leaves are named by their path, C{user.name},
                           C{items[].id}
    args_names             the names of all arguments (and JSON keys)
    headers:NAME           a request header's value, NAME in lower case
    cookies:NAME           a cookie's value
    cookies_names          the names of all cookies
    xml:PATH               an XML element's text (C{/order/item}) or attribute
                           (C{/order/item@id})
    files:FIELD            the file name of an uploaded file
    file_content:FIELD     the start of an uploaded file's content
    body                   a request body that is inspected as a whole

An exclusion's C{target} is either a whole collection (C{cookies}) or one
name in it (C{args:q}); names are compared as the engine reports them.
"""

from __future__ import annotations

from uuid import UUID

import attrs

#: The attack classes rules belong to, as stored in the request log's
#: C{attack_type} and accepted by C{--class}.
ATTACK_CLASSES = (
    "sqli", "xss", "lfi", "rfi", "rce", "php", "java", "ssti", "ssrf", "xxe", "nosqli",
    "ldapi", "crlf", "shellshock", "scanner", "protocol",
)

#: The collections a target may name (see the module docstring).
TARGET_COLLECTIONS = (
    "method", "path", "uri", "args", "args_names", "headers", "cookies", "cookies_names",
    "xml", "files", "file_content", "body",
)

MODES = ("block", "monitor")
BODY_OVERFLOW = ("inspect-prefix", "block")
#: What an endpoint profile does with the requests it matches.
PROFILE_MODES = ("normal", "skip", "deep")

DEFAULT_THRESHOLD = 5
DEFAULT_INSPECT_BODY_LIMIT = 64 * 1024
MAX_INSPECT_BODY_LIMIT = 1024 * 1024
STRICTEST_PARANOIA = 4


def parse_target(text: str) -> str:
    """
    A target as an exclusion names it, checked and normalised (header names
    in lower case); raises L{ValueError} with the reason.
    """
    text = text.strip()
    collection, colon, name = text.partition(":")
    if collection not in TARGET_COLLECTIONS:
        raise ValueError(f"{text!r} does not start with a known collection"
                         f" ({', '.join(TARGET_COLLECTIONS)})")
    if colon and not name:
        raise ValueError(f"{text!r} names no {collection} (write {collection} for all of them)")
    if len(text) > 256 or any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError("a target is at most 256 printable characters")
    if collection == "headers":
        name = name.lower()
    return f"{collection}:{name}" if colon else collection


@attrs.frozen
class Exclusion:
    """
    A rule (C{rule_id}) or a whole class (C{attack_class}) turned off for a
    site, optionally only under a path prefix and only for one target.
    Exactly one of C{rule_id} and C{attack_class} is set.
    """

    id: str
    rule_id: int | None = None
    attack_class: str | None = None
    path_prefix: str | None = None
    target: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.rule_id is None) == (self.attack_class is None):
            raise ValueError("an exclusion names a rule or a class, not both or neither")
        if self.attack_class is not None and self.attack_class not in ATTACK_CLASSES:
            raise ValueError(f"{self.attack_class!r} is not an attack class")

    def covers(self, rule_id: int, attack_class: str, path: str, target: str) -> bool:
        """
        Whether this exclusion silences rule C{rule_id} (of C{attack_class})
        matching C{target} on a request for C{path} (the normalised path).
        """
        if self.rule_id is not None:
            if self.rule_id != rule_id:
                return False
        elif self.attack_class != attack_class:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        # A whole collection (C{cookies}) covers each of its members.
        return (self.target is None or self.target == target
                or (":" not in self.target and target.startswith(self.target + ":")))


@attrs.frozen
class EndpointProfile:
    """
    Requests whose method and path match are not inspected (C{skip}) or are
    inspected at the strictest paranoia level (C{deep}).

    C{path_pattern} is an exact path (C{/healthz}), a prefix ending in
    C{*} (C{/static/*}, C{/admin*}), or a suffix starting with C{*}
    (C{*.css}); C{{name}} stands for one path segment (C{/api/users/{id}}).
    C{method} is upper case, or C{*} for any.
    """

    method: str
    path_pattern: str
    mode: str

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method:
            return False
        return path_matches(self.path_pattern, path)


def path_matches(pattern: str, path: str) -> bool:
    """Whether C{path} matches an endpoint profile's C{pattern} (see L{EndpointProfile})."""
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    if pattern.endswith("*"):
        return _segments_match(pattern[:-1], path, prefix=True)
    return _segments_match(pattern, path, prefix=False)


def _segments_match(pattern: str, path: str, prefix: bool) -> bool:
    if "{" not in pattern:
        return path.startswith(pattern) if prefix else path == pattern
    want, have = pattern.split("/"), path.split("/")
    if len(have) < len(want) or (not prefix and len(have) != len(want)):
        return False
    for i, part in enumerate(want):
        if part.startswith("{") and part.endswith("}"):
            if not have[i]:
                return False
        elif prefix and i == len(want) - 1:
            if not have[i].startswith(part):
                return False
        elif part != have[i]:
            return False
    return True


@attrs.frozen
class SitePolicy:
    """Everything the signature stage needs to know about one site."""

    site_id: UUID
    mode: str = "block"
    paranoia: int = 1
    threshold: int = DEFAULT_THRESHOLD
    inspect_body_limit: int = DEFAULT_INSPECT_BODY_LIMIT
    body_overflow: str = "inspect-prefix"
    exclusions: tuple[Exclusion, ...] = ()
    profiles: tuple[EndpointProfile, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if not 1 <= self.paranoia <= STRICTEST_PARANOIA:
            raise ValueError(f"paranoia {self.paranoia} is not 1-{STRICTEST_PARANOIA}")
        if not 1 <= self.threshold <= 1000:
            raise ValueError(f"threshold {self.threshold} is not 1-1000")
        if not 0 <= self.inspect_body_limit <= MAX_INSPECT_BODY_LIMIT:
            raise ValueError(f"inspect_body_limit {self.inspect_body_limit} is not"
                             f" 0-{MAX_INSPECT_BODY_LIMIT}")
        if self.body_overflow not in BODY_OVERFLOW:
            raise ValueError(f"body_overflow {self.body_overflow!r} is not one of {BODY_OVERFLOW}")

    def profile_for(self, method: str, path: str) -> str:
        """The endpoint profile mode for a request: the first matching profile's, else normal."""
        for profile in self.profiles:
            if profile.matches(method, path):
                return profile.mode
        return "normal"

    def as_sent(self, method: str, path: str, raw_path: str) -> SitePolicy:
        """
        This policy, without its C{skip} profiles when the request's resolved
        C{path} falls under one but the path as sent (C{raw_path}) does not
        (C{/api/../static/x}, C{/api/..;/static/x}): an origin that routes the
        raw path would serve something else than what the profile lets through
        uninspected.
        """
        if raw_path == path or self.profile_for(method, path) != "skip" \
                or self.profile_for(method, raw_path) == "skip":
            return self
        return attrs.evolve(self, profiles=tuple(p for p in self.profiles if p.mode != "skip"))

    def excluded(self, rule_id: int, attack_class: str, path: str, target: str,
                 ) -> Exclusion | None:
        """The first exclusion that silences this match, if any."""
        for exclusion in self.exclusions:
            if exclusion.covers(rule_id, attack_class, path, target):
                return exclusion
        return None

