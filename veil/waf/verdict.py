"""
The signature stage's verdict on one request, and the redacted excerpt of
the request kept with non-benign verdicts.

Scoring (DESIGN §6): each rule that matched and is not excluded adds its
severity once (critical 5, error 4, warning 3, notice 2), however many
targets it matched.  The request is C{malicious} when the score reaches the
site's threshold, C{suspicious} when it is above zero but below, C{benign}
otherwise.  The attack type is the class of the most severe scored match
(ties go to the class with the larger total, then to the more specific
class, L{SPECIFICITY}).  The confidence is how strong
the evidence is for the classification, 0..1: for C{malicious},
M{1 - 0.5 ** (score / threshold)} (0.5 at the threshold, 0.75 at twice it);
for C{suspicious}, M{score / threshold}; C{benign} is 1.
"""

from __future__ import annotations

import re

import attrs

from veil.waf.decoding import percent_decode
from veil.waf.request import Request, is_secret_name

BENIGN = "benign"
SUSPICIOUS = "suspicious"
MALICIOUS = "malicious"
CLASSIFIER = "signature"

#: Classes from the most specific to the most generic: a tie between
#: classes goes to the more specific (XXE over the file it reads, command
#: injection over the path it names).
SPECIFICITY = ("xxe", "shellshock", "java", "ssti", "nosqli", "ldapi", "crlf", "php", "sqli",
               "xss", "rce", "rfi", "ssrf", "lfi", "scanner", "protocol")

#: The longest excerpt, in characters.
EXCERPT_LIMIT = 1024
MASK = "***"


@attrs.frozen
class Match:
    """One rule that matched one target (the target's name, never its value)."""

    rule_id: int
    attack_class: str
    severity: int
    target: str
    #: The id of the site exclusion that silences it, if one does.
    excluded_by: str | None = None
    #: A detector's fingerprint or the anomaly's kind, when there is one.
    detail: str | None = None
    #: For C{veil waf check} only: the rule's transformations and the
    #: transformed value it matched (cut short).
    transforms: tuple[str, ...] = ()
    value: str | None = None


@attrs.frozen
class Verdict:
    """What the signature stage concluded about a request."""

    classification: str
    score: int
    threshold: int
    attack_type: str | None
    confidence: float
    mode: str
    paranoia: int
    #: The endpoint profile that applied: normal, skip or deep.
    profile: str = "normal"
    matches: tuple[Match, ...] = ()
    excerpt: str | None = None

    @property
    def classifier(self) -> str:
        return CLASSIFIER

    @property
    def malicious(self) -> bool:
        return self.classification == MALICIOUS

    @property
    def blocked(self) -> bool:
        """Whether the request is refused (malicious on a site in block mode)."""
        return self.classification == MALICIOUS and self.mode == "block"

    @property
    def rule_ids(self) -> tuple[int, ...]:
        """The ids of the rules that count towards the score, in order."""
        return tuple(sorted({m.rule_id for m in self.matches if m.excluded_by is None}))

    @property
    def excluded_ids(self) -> tuple[int, ...]:
        """The ids of rules that matched but are excluded for this site."""
        counted = set(self.rule_ids)
        return tuple(sorted({m.rule_id for m in self.matches
                             if m.excluded_by is not None and m.rule_id not in counted}))


#: Benign verdicts are all alike: one per (threshold, mode, paranoia, profile).
_BENIGN: dict[tuple[int, str, int, str], Verdict] = {}


def judge(matches: tuple[Match, ...], threshold: int, mode: str, paranoia: int,
          profile: str, request: Request | None) -> Verdict:
    """The verdict for these matches; C{request} is used for the excerpt."""
    if not matches:
        key = (threshold, mode, paranoia, profile)
        verdict = _BENIGN.get(key)
        if verdict is None:
            if len(_BENIGN) >= 256:
                _BENIGN.clear()
            verdict = _BENIGN[key] = Verdict(BENIGN, 0, threshold, None, 1.0, mode, paranoia,
                                             profile, (), None)
        return verdict
    best: dict[int, Match] = {}
    for match in matches:
        if match.excluded_by is None and match.rule_id not in best:
            best[match.rule_id] = match
    score = sum(m.severity for m in best.values())
    attack_type = None
    if best:
        by_class: dict[str, int] = {}
        for m in best.values():
            by_class[m.attack_class] = by_class.get(m.attack_class, 0) + m.severity
        top = max(best.values(), key=lambda m: (m.severity, by_class[m.attack_class],
                                                 -SPECIFICITY.index(m.attack_class)))
        attack_type = top.attack_class
    if score >= threshold:
        classification, confidence = MALICIOUS, 1 - 0.5 ** (score / threshold)
    elif score > 0:
        classification, confidence = SUSPICIOUS, score / threshold
    else:
        classification, confidence = BENIGN, 1.0
    text = None
    if classification != BENIGN and request is not None:
        text = excerpt(request, {m.target for m in matches})
    return Verdict(classification, score, threshold, attack_type, round(confidence, 4), mode,
                   paranoia, profile, matches, text)


# -- the excerpt ---------------------------------------------------------------------------

_ALWAYS_SHOWN = ("host", "user-agent", "referer", "content-type", "content-length")
_AUTH_HEADERS = ("authorization", "proxy-authorization")
_SECRET_HEADERS = re.compile(r"(?:token|key|secret|auth|session|signature|cookie|csrf|xsrf)")
_JSON_SECRET = re.compile(r'("([^"\\]{0,64})"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\]\s]+)')
_PAIR_SECRET = re.compile(r"(?<![\w.%-])([\w.%\[\]-]{1,64})=([^&\s]*)")


def printable(text: str) -> str:
    """C{text} with control and other unprintable characters as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF \
        else f"\\U{code:08x}"


def _mask_pairs(text: str) -> str:
    """C{name=value} pairs of a query or form with secret-named values masked."""
    def mask(match: re.Match[str]) -> str:
        name = match.group(1)
        if is_secret_name(percent_decode(name, True)):
            return f"{name}={MASK}"
        return match.group()
    return _PAIR_SECRET.sub(mask, text)


def _mask_json(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        if is_secret_name(match.group(2)):
            return f'{match.group(1)}"{MASK}"'
        return match.group()
    return _JSON_SECRET.sub(mask, text)


def _cookie_names(value: str) -> str:
    names = [item.partition("=")[0].strip() for item in value.split(";")]
    return "; ".join(f"{n}={MASK}" for n in names if n)


def _header_line(name: str, value: str) -> str:
    if name == "cookie":
        shown = _cookie_names(value)
    elif name in _AUTH_HEADERS:
        scheme = value.strip().partition(" ")[0]
        shown = f"{scheme} {MASK}" if scheme and " " in value.strip() else MASK
    elif name == "set-cookie" or _SECRET_HEADERS.search(name):
        shown = MASK
    else:
        shown = _mask_pairs(value) if "=" in value else value
    return f"{name}: {shown}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def excerpt(request: Request, targets: set[str], limit: int = EXCERPT_LIMIT) -> str:
    """
    The request line, the headers that matter (those always shown and those
    that matched) and the start of the body, with cookies, credentials and
    secret-named parameters masked, unprintable characters escaped, at most
    C{limit} characters.
    """
    uri = request.uri
    path, question, query = uri.partition("?")
    line = request.method + " " + path + (question + _mask_pairs(query) if question else "")
    lines = [_cut(printable(line), 512)]
    matched_headers = {t.partition(":")[2] for t in targets if t.startswith("headers:")}
    for name, value in request.headers:
        if name in _ALWAYS_SHOWN or name in matched_headers or name in ("cookie",) + _AUTH_HEADERS:
            lines.append(_cut(printable(_header_line(name, value)), 256))
    if request.body:
        media, _ = request.media_type
        text = request.body[:2048].decode("utf-8", "replace")
        if "json" in media or text.lstrip()[:1] in ("{", "["):
            text = _mask_json(text)
        elif "multipart" not in media:
            text = _mask_pairs(text)
        else:
            text = re.sub(r'(name="([^"]*)"\r?\n(?:[^\r\n]+\r?\n)*\r?\n)([^\r\n]*)',
                          lambda m: m.group(1) + (MASK if is_secret_name(m.group(2))
                                                  else m.group(3)), text)
        lines.append("")
        lines.append(printable(text))
    return _cut("\n".join(lines), limit)
