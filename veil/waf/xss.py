"""
Veil's cross-site-scripting detector.

A value becomes script in a page when the page puts it, unescaped, in one
of these places; L{detect} reads the text as each of them:

  - I{HTML text}: the text is tokenized as a browser would
    (L{veil.waf.htmltokens}); it is an attack when it makes a tag that runs
    script or loads active content (C{script} with code, C{iframe},
    C{object}, C{embed}, C{base}, C{link}, SVG animation, ... with
    attributes), an event handler attribute (C{onerror=}), an attribute
    whose URL has an active scheme (C{javascript:}, C{vbscript:},
    C{data:text/html}) however it is written, CSS that runs code or plays
    parser tricks (C{expression()}, C{behavior}, C{-moz-binding},
    C{@import}, escapes and stray brackets in a C{style} attribute), an
    C{srcdoc} that is itself an attack, an SVG (other than a plain drawing)
    or MathML element, a C{<meta>} that refreshes, sets cookies or switches
    to a charset that hides markup, a document type with an internal
    subset, an XML style sheet, or an IE conditional comment that carries
    one.  Comments are read again from inside (a browser would hide them;
    a value that hides a tag in a comment is up to something), as are bogus
    comments and tag names with a C{<} in them (what filters that delete
    tags leave behind).
  - I{inside an attribute value} (unquoted, single- or double-quoted): from
    where the value leaves its quotes, the attributes that follow are judged
    as above (an event handler here must be a known event name, since the
    tag is unseen).
  - I{a whole URL} (C{<a href="VALUE">}): an active scheme followed by code.
  - I{JavaScript} (a string in a script, an event handler): from just after
    the first C{'}, C{"} or C{`}, or from the start, the text is read as
    JavaScript (L{veil.waf.jstokens}); it is an attack when, while still
    valid JavaScript, it calls a sink (C{alert}, C{eval}, C{fetch}, a
    C{constructor}, ...) or assigns to C{location}.

Ordinary HTML is let through: C{<b>}, C{<a href="https://...">}, C{<img
src="cat.jpg">}, C{<span style="color: red">}, as are "<3", "a < b",
"h2<h1", C{List<String>} and "JavaScript: the good parts".  An event
handler that calls one page function with plain arguments
(C{onclick="save()"}, as in a question about HTML) is flagged only from
paranoia 2 (unless C{autofocus}, or C{open} for C{ontoggle} and
C{onbeforetoggle}, fires it unasked), as are C{<form>}, C{<template>}, any
C{style} and SVG drawings (shapes only, as pasted icons are).  A JSX
handler (C{onClick={save}}) is code that runs nothing when HTML reads it.
A C{<style>} sheet is flagged at paranoia 1 only when its CSS runs code,
loads more or plays parser tricks, so that HTML e-mail passes.

L{PREFILTER} is a regular expression that every text L{detect} flags
matches; the engine scans values with it and calls L{detect} on hits only.

Bounds: breakouts are looked for in the first L{MAX_SCAN} characters (1
MiB); each reading covers at most L{MAX_CHARS} characters (64 KiB) from its
start, and the JavaScript readings at most C{jstokens.MAX_TOKENS} tokens.
"""

from __future__ import annotations

import html
import re

from veil.waf import htmltokens, jstokens
from veil.waf.htmltokens import lower
from veil.waf.wordsets import words

__all__ = ["MAX_CHARS", "MAX_SCAN", "PREFILTER", "detect"]

#: Characters of a value searched for the quote that starts a context.
MAX_SCAN = 1024 * 1024
#: Characters read from the start of each context.
MAX_CHARS = 64 * 1024

_SINK_NAMES = "|".join(sorted(jstokens.SINKS | jstokens.TARGETS))
_HTML_SPACE = r"[\t\n\x0b\f\r ]*"
_URL_GAP = r"(?:[\x00-\x1f]|\xef\xbf\xbd)*"

#: Every text that L{detect} flags matches this (hyperscan's dialect, ASCII
#: classes only).  The HTML readings need a C{<} (tags, comments) or an
#: attribute that follows a value: an event handler (C{on...=}), a
#: C{style=}, or a URL whose active scheme shows as C{script:} or C{data:}
#: -- possibly cut by the tabs and newlines that URLs ignore, or written
#: with character references (C{&#...}, C{&name;}).  The JavaScript
#: readings need a sink's or target's name, a C{\\u} escape that spells
#: one, or JSFuck's C{![]}/C{+[]}; the whole-value CSS reading one of the
#: words in L{_CSS_WORDS}.  An C{srcdoc} holds HTML whose C{<} may be a
#: character reference without its C{;}, so the word itself is listed.
PREFILTER = (
    r"(?i)<|\\u|&#|&[a-z][a-z0-9]*;|!\[\]|\+\[\]|expression|binding|behavio|srcdoc|"
    r"on[a-z]+" + _HTML_SPACE + "=|style" + _HTML_SPACE + "=|"
    + _URL_GAP.join("script:") + "|" + _URL_GAP.join("data:") + "|"
    r"(?:" + _SINK_NAMES + ")"
)

#: Tags that run script or load active content by themselves.
_DANGEROUS_TAGS = words("""
    script iframe frame frameset object embed applet base link style xml import bgsound
    isindex layer ilayer portal handler listener animate set animatemotion animatetransform
    vmlframe
""")
#: Tags that can, with the right content or attributes; flagged alone from
#: paranoia 2.
_SUSPECT_TAGS = words("form meta template plaintext xmp")
#: Vocabularies whose elements run script, animate attributes into URLs or
#: make links wherever they appear.
_CONTAINERS = words("svg math")
_ACTIVE_NAMESPACES = words("svg math xsl")
_LOCAL_NAME = re.compile(r"[a-z0-9_.-]*")
#: Attributes that hold a URL the browser loads or navigates to.
_URL_ATTRS = words("""
    href src action formaction data background dynsrc lowsrc poster code codebase cite
    longdesc usemap profile icon manifest archive classid ping folder datasrc xml:base
    xlink:href from to values by srcset
""")
_URL_ATTR_SUFFIXES = (":href", "src", "action", "href")
#: Event handlers, without the "on" (HTML, SVG, and old IE ones attacks use).
_EVENTS = words("""
    abort activate afterprint afterscriptexecute afterupdate animationcancel animationend
    animationiteration animationstart auxclick beforeactivate beforecopy beforecut
    beforedeactivate beforeeditfocus beforeinput beforematch beforepaste beforeprint
    beforescriptexecute beforetoggle beforeunload beforeupdate begin blur bounce cancel
    canplay canplaythrough cellchange change click close contentvisibilityautostatechange
    contextmenu controlselect copy cuechange cut dataavailable datasetchanged
    datasetcomplete dblclick deactivate drag dragdrop dragend dragenter dragexit dragleave
    dragover dragstart drop durationchange emptied end ended error errorupdate filterchange
    finish focus focusin focusout formchange formdata forminput fullscreenchange
    fullscreenerror gotpointercapture hashchange help input invalid keydown keypress keyup
    layoutcomplete load loadeddata loadedmetadata loadend loadstart losecapture
    lostpointercapture message messageerror mousedown mouseenter mouseleave mousemove
    mouseout mouseover mouseup mousewheel move moveend movestart offline online pagehide
    pagereveal pageshow pageswap paste pause play playing pointercancel pointerdown
    pointerenter pointerleave pointermove pointerout pointerover pointerrawupdate
    pointerup popstate progress propertychange ratechange readystatechange rejectionhandled
    repeat reset resize resizeend resizestart rowenter rowexit rowsdelete rowsinserted
    scroll scrollend search securitypolicyviolation seek seeked seeking select
    selectionchange selectstart show slotchange stalled start storage submit suspend
    timeupdate timer toggle touchcancel touchend touchmove touchstart transitioncancel
    transitionend transitionrun transitionstart unhandledrejection unload urlflip
    visibilitychange volumechange waiting webkitanimationend webkitanimationiteration
    webkitanimationstart webkittransitionend wheel zoom
""")
_EVENT_NAME = re.compile(r"on[a-z]{3,}")
# A handler that only calls one page function with plain arguments:
# save(), toggle(this), return check(event, 'x', 2);
_PLAIN_ARG = r"(?:[\w$.]+|'[^'\\<>/:(]*'|\"[^\"\\<>/:(]*\")"
_PLAIN_HANDLER = re.compile(
    r"\s*(?:return\s+)?([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\(\s*"
    r"(?:" + _PLAIN_ARG + r"\s*(?:,\s*" + _PLAIN_ARG + r"\s*)*)?\)\s*;?\s*"
)
_JSFUCK = "[]()!+ \t\n"
_BARE_NAME = re.compile(r"\s*[\w$.]*\s*")
# JSX's handler expressions as HTML reads them, code that runs nothing: a
# block holding a name ({handleClick}, {this.save}), or an arrow function
# cut short where the unquoted value ends ({() or {e of {() => f()}).
_JSX_HANDLER = re.compile(r"\s*\{\s*\(?\s*[\w$.]*\s*\)?\s*\}?\s*")
# A value that old IE reads as quoted with backticks (=`...`).
_BACKTICK_VALUE = re.compile(r"=[\t\n\f\r ]*`")
_ACTIVE_PI = ("xml-stylesheet", "import", "xml:namespace")
# Content that starts like a sentence: three words and spaces.
_PROSE = re.compile(r"\s*([A-Za-z][\w'’-]*)[:,;.]?[ \t]+[A-Za-z][\w'’-]*[:,;.]?[ \t]+[A-Za-z]")
_CODE_WORDS = words("var let const function return new typeof void throw async await if "
                        "for while do try class with delete yield")
# The whole-value CSS reading (a value put in a style attribute).
_CSS_WORDS = ("expression", "binding", "behavio")
_ACTIVE_SCHEMES = ("javascript:", "vbscript:", "livescript:")
_SAFE_DATA = ("data:image/png", "data:image/gif", "data:image/jpeg", "data:image/jpg",
              "data:image/webp", "data:image/bmp", "data:image/avif", "data:image/x-icon",
              "data:image/vnd.microsoft.icon", "data:font/", "data:audio/", "data:video/",
              "data:text/plain")
_URL_STRIP = "".join(chr(c) for c in range(0x21))
_SCHEME_INITIALS = frozenset("jJvVlLdD")
# The characters read for a scheme (it may be cut by tabs and newlines).
_SCHEME_WINDOW = 1024
_URL_GAPS = str.maketrans("", "", "".join(chr(c) for c in range(0x20)) + "\ufffd")
_HARMLESS_JS = frozenset(["", ";", "void(0)", "void(0);", "void0", "void0;"])
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t\n\r\f]?|\\(.)", re.DOTALL)
_CSS_ODD = re.compile(r"[{}\[\]<>\\]|/\*")
_CSS_ACTIVE = re.compile(
    r"expression\s*\(|behaviou?r\s*:|binding\s*:|javascript:|vbscript:|@import|-o-link"
    r"|url\s*\(\s*['\"]?\s*data:(?!image/(?:png|gif|jpe?g|webp))"
)
_CSS_CODE = re.compile(r"(?:^|[:;{]\s*)expression\s*\(|behaviou?r\s*:\s*url|-moz-binding\s*:")
# What the attribute readings can flag needs one of these (in lower case).
_ATTRIBUTE_HINT = re.compile(r"(?:on[a-z]+|style|srcdoc|href|src|action|data)[\t\n\x0b\f\r ]*=")
_VALUE_END = re.compile(r"[\t\n\x0b\f\r >]")
# ... and the JavaScript readings one of these.
_JS_HINT = re.compile(r"\\u|" + "|".join(sorted(jstokens.SINKS | jstokens.TARGETS)))
_QUOTES = (("'", "squote"), ('"', "dquote"), ("`", "backtick"))


def detect(text: str, paranoia: int = 1) -> str | None:
    """
    Whether C{text} is an XSS attack: a short reason -- what was found and
    in which reading, C{"tag:script@html"}, C{"event:onerror@attr-dquote"},
    C{"sink:alert@js-squote"} -- if it is, else C{None}.  Never raises.

    C{paranoia} 1 (the default) lets plain markup through (see the module
    docstring); 2 and above (the engine's 3 and 4 behave as 2) also flag
    any event handler, any C{style}, SVG drawings, forms and templates.
    """
    lt = text.find("<", 0, MAX_SCAN)
    if lt >= 0:
        reason = _html(text, htmltokens.DATA, lt, paranoia, 0)
        if reason:
            return reason + "@html"
    head = text[:MAX_CHARS]
    low = lower(head)
    if "=" in low and _ATTRIBUTE_HINT.search(low):
        # Each attribute reading starts where the value would end; it is
        # worth reading only if an attribute it can flag comes after that.
        for state, name in ((htmltokens.DQUOTED, "dquote"), (htmltokens.SQUOTED, "squote"),
                            (htmltokens.UNQUOTED, "unquoted")):
            if state == htmltokens.UNQUOTED:
                if head.lstrip().startswith("<"):
                    continue   # markup, which the HTML reading covers
                m = _VALUE_END.search(head)
                end = m.start() if m else -1
            else:
                end = head.find('"' if state == htmltokens.DQUOTED else "'")
            if end >= 0 and _ATTRIBUTE_HINT.search(low, end):
                reason = _html(head, state, 0, paranoia, 0)
                if reason:
                    return reason + "@attr-" + name
    value = head.strip(_URL_STRIP)
    reason = _url(value)
    if reason:
        return reason + "@url"
    if any(word in low for word in _CSS_WORDS) and _css_active(head, whole=True):
        return "style@css"
    if _jsfuck(value):
        return "jsfuck@js"
    # The JavaScript readings flag only a sink or target named in the text
    # (or spelled with \u escapes): without one, skip them.
    if _JS_HINT.search(low):
        reason = jstokens.scan(head, 0, False, len(head), jstokens.STRICT_SINKS)
        if reason:
            return "sink:" + reason + "@js"
    for quote, name in _QUOTES:
        start = _after_quote(text, quote)
        if start > 0:
            stop = min(len(text), start + MAX_CHARS)
            if start < MAX_CHARS and stop <= MAX_CHARS:
                hint = _JS_HINT.search(low, start)
            else:
                hint = _JS_HINT.search(lower(text[start:stop]))
            if hint:
                reason = jstokens.scan(text, start, True, stop)
                if reason:
                    return "sink:" + reason + "@js-" + name
    return None


def _after_quote(text: str, quote: str) -> int:
    """
    Just after the first C{quote}, or -1.  A backslash before it does not
    count: a page that escapes quotes but not backslashes turns C{\\"}
    into C{\\\\"}, which ends its string.
    """
    i = text.find(quote, 0, MAX_SCAN)
    return i + 1 if i >= 0 else -1


def _html(text: str, state: str, start: int, paranoia: int, depth: int) -> str | None:
    """
    The first attack among the HTML tokens of C{text} read from C{start} in
    C{state}, for at most L{MAX_CHARS} characters.
    """
    pseudo = state != htmltokens.DATA
    unquoted = state == htmltokens.UNQUOTED
    end = min(len(text), start + MAX_CHARS)
    for tok in htmltokens.tokens(text, state, end, start):
        kind = tok[0]
        if kind == "tag":
            name, attrs, closing, after = tok[1], tok[2], tok[3], tok[4]
            if closing:
                if not attrs:
                    continue
                # </a onmousemove=...>: browsers drop an end tag's
                # attributes, but no honest text has any.
                name = ""
            if "<" in name and depth == 0:
                # <scr<script>ipt>: read on from the inner '<', as what a
                # filter that deletes tags would leave.
                inner = _html(text, htmltokens.DATA, tok[5] + name.index("<"), paranoia, depth + 1)
                if inner:
                    return inner
            # <scr\0ipt>, <v:vmlframe>, <svg:script>, <script<x>: the local
            # name, as old and XML-minded parsers read it.
            name = name.replace("\x00", "")
            prefix, _, local = name.rpartition(":")
            local = _LOCAL_NAME.match(local).group()
            if (local in _CONTAINERS or prefix in _ACTIVE_NAMESPACES) and not (
                    local == "svg" and not prefix and paranoia < 2
                    and _drawing(attrs, text, after, end)):
                # SVG, MathML, XSLT: script, animation and links inside.
                return "tag:" + (prefix + ":" if prefix in _ACTIVE_NAMESPACES else "") + local
            name = local
            # The element does something only with attributes or content;
            # a style sheet only when its CSS runs code or loads more.
            if name == "style":
                if paranoia >= 2 or _active_style(attrs, text, after, end):
                    return "tag:style"
            elif name in _DANGEROUS_TAGS and (
                    attrs or paranoia >= 2 or _active_content(name, text, after, end)):
                return "tag:" + name
            if paranoia >= 2 and name in _SUSPECT_TAGS:
                return "tag:" + name
            # An attribute that fires a handler without the user: autofocus
            # (focus), open (a <details> or <dialog> toggles as it renders).
            names = [a for a, _ in attrs]
            fires = "autofocus" in names or ("open" in names and (
                "ontoggle" in names or "onbeforetoggle" in names))
            # A \v ends an unquoted value and a backtick quotes one here (as
            # old IE read them) but not in today's browsers, where
            # onerror={x}\vprint() and onerror=`{x}`;print() run print():
            # no JSX reading for a tag that has either.
            raw = text[tok[5]:after]
            jsx = "\x0b" not in raw and not _BACKTICK_VALUE.search(raw)
            for aname, value in attrs:
                if value is None:
                    continue
                if not pseudo:
                    # onerror\0=, x:ontimer=: as old and XML browsers read them.
                    aname = aname.replace("\x00", "")
                    if ":" in aname:
                        if aname.endswith(":handler"):
                            return "event:" + aname   # XML Events
                        if "on" in aname:
                            aname = aname.rpartition(":")[2]
                reason = _attribute(aname, value, pseudo, unquoted, paranoia + fires, depth, jsx)
                if reason:
                    return reason
                if name == "meta" and _active_meta(aname, value, attrs):
                    return "tag:meta"   # refresh, cookies, a UTF-7 page
            if pseudo:
                # Past the attributes that follow the value: the rest is
                # the text's own markup, which the HTML reading judges.
                return None
        elif depth == 0:
            body = tok[1]
            if kind == "pi":
                if lower(body).startswith(_ACTIVE_PI):
                    return "pi"   # a style sheet (XSLT runs script), IE imports
                # <?foo href="javascript:..."?>: its attributes.
                reason = _html("<pi " + body + ">", htmltokens.DATA, 0, paranoia, depth + 1)
            elif body[:7].upper() == "DOCTYPE" and ("[" in body or "ENTITY" in body.upper()):
                return "doctype"  # an internal subset: entities, attribute defaults
            elif "<" not in body:
                reason = None
            elif tok[3]:
                # <!<script>...: a bogus comment ends at the first '>', which
                # the misparse wants; read on from its '<' as older parsers do.
                reason = _html(text, htmltokens.DATA, tok[2] + body.find("<"), paranoia,
                               depth + 1)
            else:
                # A conditional comment (<!--[if IE]>) runs its content in
                # old browsers; any other only hides it, which is suspect
                # in a value.
                reason = _html(body, htmltokens.DATA, 0, paranoia, depth + 1)
            if reason:
                return reason
    return None


def _active_content(name: str, text: str, pos: int, end: int) -> bool:
    """Whether a script element (with no attribute) has content, rather
    than nothing or prose that mentions the element ("the <script> tag: put
    it at the end")."""
    if name != "script":
        return False
    content = text[pos:min(end, pos + 200)]
    if not content.strip():
        return False
    m = _PROSE.match(content)
    return not (m and lower(m.group(1)) not in _CODE_WORDS)


_DRAWING_ATTRS = words("""
    width height viewbox xmlns version class id fill stroke stroke-width stroke-linecap
    stroke-linejoin fill-rule clip-rule opacity preserveaspectratio role aria-hidden
    aria-label focusable x y d cx cy r rx ry x1 x2 y1 y2 points transform offset
    stop-color stop-opacity gradientunits gradienttransform font-size font-family
    text-anchor dominant-baseline
""")
_DRAWING_TAGS = words("""
    svg path rect circle ellipse line polyline polygon g defs title desc text tspan
    lineargradient radialgradient stop clippath mask symbol
""")
# What shapes in an icon have no use for: references, styles, entities.
_NOT_DRAWING = ("url(", "href", "style", "xlink", "&", "data:", "script")
_TAG_NAMES = re.compile(r"</?([A-Za-z][^\t\n\v\f\r />]*)")


def _drawing(attrs: list, text: str, pos: int, end: int) -> bool:
    """
    Whether an <svg> element is a plain drawing, as pasted icons are: only
    presentation attributes, and shapes inside (their own attributes are
    judged as any other tag's).  A bare <svg>, or one with links, scripts,
    animations, foreign content or odd attributes, is not.
    """
    if any(name not in _DRAWING_ATTRS for name, _ in attrs):
        return False
    content = lower(text[pos:min(end, pos + 4096)])
    close = content.find("</svg")
    if close < 0:
        return False
    content = content[:close]
    if any(word in content for word in _NOT_DRAWING):
        return False
    names = [lower(n) for n in _TAG_NAMES.findall(content)]
    return bool(names) and all(n in _DRAWING_TAGS for n in names)


def _active_style(attrs: list, text: str, pos: int, end: int) -> bool:
    """Whether a <style> element runs code or loads more: a type other than
    CSS, a handler, or CSS that does (a plain style sheet, as HTML e-mail
    carries, does not)."""
    for name, value in attrs:
        if name == "type" and value is not None and lower(value.strip()) not in ("", "text/css"):
            return True
        if name.startswith("on") and _EVENT_NAME.fullmatch(name):
            return True
    close = lower(text[pos:end]).find("</style")
    sheet = text[pos:end if close < 0 else pos + close]
    lt = sheet.find("<")
    if _PROSE.match(sheet) and "{" not in sheet[:lt if lt >= 0 else len(sheet)]:
        return False   # "a <style> block in the <head>": prose
    return _css_active(sheet, sheet=True)


_SAFE_CHARSETS = re.compile(r"(?:utf-?8|us-ascii|ascii|iso-?8859-\d+|windows-125\d|latin-?1|"
                            r"shift_jis|euc-jp|euc-kr|gb2312|gbk|gb18030|big5|koi8-[ru])")


def _active_meta(name: str, value: str, attrs: list) -> bool:
    """Whether a <meta> attribute makes the page refresh, set cookies or
    decode itself in a charset that hides markup (UTF-7 and the like)."""
    value = lower(_unescape(value)).strip()
    if name == "http-equiv":
        if value in ("refresh", "set-cookie", "link", "default-style"):
            return True
        if value == "content-type":
            content = next((lower(v) for n, v in attrs if n == "content" and v), "")
            charset = content.partition("charset=")[2].strip(" ;\"'")
            return bool(charset) and not _SAFE_CHARSETS.fullmatch(charset)
        return False
    if name == "charset":
        return not _SAFE_CHARSETS.fullmatch(value.strip("\"'"))
    return False


def _jsfuck(value: str) -> bool:
    """Whether a value is JavaScript written with []()!+ only."""
    return len(value) >= 8 and ("![]" in value or "+[]" in value) and not value.strip(_JSFUCK)


def _attribute(name: str, value: str, pseudo: bool, unquoted: bool, paranoia: int,
               depth: int, jsx: bool = True) -> str | None:
    """
    Why the attribute C{name}=C{value} is an attack, or C{None}.  C{pseudo}:
    it follows the value the text was injected into, in a tag the text does
    not show (C{unquoted}: that value had no quotes).
    """
    decoded = _unescape(value)
    if name.startswith("on") and _EVENT_NAME.fullmatch(name):
        if pseudo and name[2:] not in _EVENTS:
            return None
        if not decoded.strip() or (unquoted and _BARE_NAME.fullmatch(decoded)) \
                or (jsx and _JSX_HANDLER.fullmatch(decoded)):
            # No code; or, in prose read as attributes ("add onclick=save
            # to the button"), a name that is not called; or JSX.
            return None
        # A handler that calls one page function simply, in a tag the text
        # shows or after an unquoted value (as in a question about HTML),
        # needs paranoia 2; after a quote the text broke out of, it counts.
        if paranoia < 2 and (not pseudo or unquoted) and name[2:] in _EVENTS \
                and _plain_handler(decoded):
            return None
        return "event:" + name
    if name == "style":
        if _css_active(decoded) or (paranoia >= 2 and decoded.strip()):
            return "style"
        return None
    if name == "srcdoc":
        if depth < 1 and _html(decoded, htmltokens.DATA, 0, paranoia, depth + 1):
            return "srcdoc"
        return None
    if name == "dataformatas" and lower(decoded.strip()) == "html":
        return "data-binding"   # IE data binding renders fetched HTML
    if "#default#" in lower(decoded):
        return "behavior"       # IE behaviours run script
    if name in _URL_ATTRS or name.endswith(_URL_ATTR_SUFFIXES):
        if _active_url(decoded):
            return "url:" + name
    else:
        # Any other attribute runs a URL only in old or XML-ish browsers
        # (WML, XML Events): count it when code follows the scheme.
        reason = _url(decoded)
        if reason:
            return "url:" + name
    if depth == 0 and "<" in value:
        # Markup inside a value: what a browser that misreads the quotes
        # (or a page that copies the value into HTML) would see.
        return _html(value, htmltokens.DATA, value.find("<"), paranoia, depth + 1)
    return None


def _unescape(value: str) -> str:
    return html.unescape(value) if "&" in value else value


def _plain_handler(code: str) -> bool:
    """Whether an event handler only calls one non-sink function simply."""
    m = _PLAIN_HANDLER.fullmatch(code)
    if not m:
        return False
    parts = m.group(1).lower().split(".")
    return not any(p in jstokens.SINKS or p in jstokens.TARGETS or p in ("document", "window")
                   for p in parts)


def _normal_url(value: str) -> str:
    """
    The start of a URL as browsers read its scheme: no leading controls,
    spaces (or backticks, IE's quotes), no tabs or newlines anywhere -- nor
    other control characters, which old browsers skipped too -- in ASCII
    lower case; C{""} when it cannot start with an active scheme.
    """
    value = value.lstrip(_URL_STRIP + "`")
    if value[:1] not in _SCHEME_INITIALS:
        return ""
    return lower(value[:_SCHEME_WINDOW].translate(_URL_GAPS))


def _active_url(value: str) -> bool:
    url = _normal_url(value)
    if not url:
        return False
    if url.startswith(_ACTIVE_SCHEMES):
        body = url.split(":", 1)[1].replace(" ", "")
        return body not in _HARMLESS_JS
    if url.startswith("data:"):
        return not url.startswith(_SAFE_DATA)
    return False


def _url(value: str) -> str | None:
    """Why a whole value is an active URL, or C{None}: a script scheme
    followed by code that calls something, or a data: URL of a document."""
    if value[:1] not in _SCHEME_INITIALS and value[:1] != "&":
        return None
    decoded = _unescape(value[:MAX_CHARS]).strip(_URL_STRIP + "`")
    url = _normal_url(decoded)
    if url.startswith(_ACTIVE_SCHEMES):
        # The code after the scheme; its newlines are kept (a browser
        # percent-decodes the body, and the engine has decoded it already).
        found = jstokens.scan(decoded, decoded.find(":") + 1, False, len(decoded))
        if found:
            return "scheme:" + url.split(":", 1)[0]
        return None
    if url.startswith(("data:text/html", "data:image/svg", "data:application/xhtml",
                       "data:application/xml", "data:text/xml", "data:text/javascript",
                       "data:application/javascript", "data:application/x-javascript")):
        return "scheme:data"
    return None


def _css_active(css: str, whole: bool = False, sheet: bool = False) -> bool:
    """
    Whether CSS runs code or loads a document.  For a style attribute,
    brackets, escapes, comments or markup count too (a declaration list
    has no use for them); a style C{sheet} has them by nature.  A C{whole}
    value read as CSS must do so with one of the words L{_CSS_WORDS} shows
    in the raw text (not with C{@import} or a C{javascript:} URL, which
    prose about CSS mentions).
    """
    if whole:
        checks = _CSS_CODE
    elif sheet:
        if _sheet_odd(css):
            return True
        checks = _CSS_ACTIVE
    elif _CSS_ODD.search(css):
        # Brackets, escapes, comments, markup in a style attribute: what
        # CSS injection and filter evasion use, and plain styling does not.
        return True
    else:
        checks = _CSS_ACTIVE
    if "\\" in css:
        css = _CSS_ESCAPE.sub(lambda m: _css_char(m.group(1)) if m.group(1) else m.group(2), css)
    if "/*" in css:
        css = _CSS_COMMENT.sub("", css)
    return bool(checks.search(lower(css)))


_SHEET_ODD = re.compile(r"[\\<\x00-\x08\x0b\x0e-\x1f\ufffd]")
_OPENERS = {"{": "}", "[": "]", "(": ")"}
_CLOSERS = frozenset("}])")


def _sheet_odd(css: str) -> bool:
    """Whether a style sheet has what CSS parsing tricks use: escapes,
    markup or controls inside, or brackets that do not nest (HTML e-mail's
    <!-- ... --> around the whole sheet is allowed)."""
    css = css.strip()
    css = css.removeprefix("<!--")
    css = css.removesuffix("-->")
    if _SHEET_ODD.search(css):
        return True
    if "/*" in css:
        css = _CSS_COMMENT.sub("", css)
    stack = []
    for c in css:
        if c in _OPENERS:
            stack.append(_OPENERS[c])
        elif c in _CLOSERS and (not stack or stack.pop() != c):
            return True
    return bool(stack)


def _css_char(hexdigits: str) -> str:
    n = int(hexdigits, 16)
    return chr(n) if 0 < n < 0x110000 else "\ufffd"
