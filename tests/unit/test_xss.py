"""Tests for L{veil.waf.xss} and its readers L{veil.waf.htmltokens} and
L{veil.waf.jstokens}."""

from __future__ import annotations

import re
from typing import ClassVar

import hyperscan
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf import htmltokens, jstokens, xss

PROPERTY = settings(max_examples=600, derandomize=True, deadline=None, database=None)


def tags(text: str, state: str = htmltokens.DATA) -> list:
    """The tags of C{text}: (name, attrs, closing)."""
    return [t[1:4] for t in htmltokens.tokens(text, state) if t[0] == "tag"]


class HTMLTokenizerTests(SynchronousTestCase):
    """L{htmltokens.tokens} finds tags, attributes and comments as browsers do."""

    def test_tags_and_attributes(self) -> None:
        """Names in ASCII lower case; double-, single-, back-quoted and unquoted
        values; '/' between attributes; attributes without '='."""
        self.assertEqual(
            tags('<IMG SRC="a b" alt=\'c\' data-x=y/onerror=z checked `q`=`r`>'),
            [("img", [("src", "a b"), ("alt", "c"), ("data-x", "y/onerror=z"),
                      ("checked", None), ("`q`", "r")], False)])
        self.assertEqual(tags("<a/href=x/title=y>"),
                         [("a", [("href", "x/title=y")], False)])
        self.assertEqual(tags('<img src="x"onerror=1>'),
                         [("img", [("src", "x"), ("onerror", "1")], False)])
        self.assertEqual(tags("<x =y>"), [("x", [("=y", None)], False)])

    def test_end_tags_text_and_unclosed(self) -> None:
        """End tags; '<' not followed by a letter is text; a tag left open at
        the end is still a tag; NULs after '<' are skipped."""
        self.assertEqual(tags("a < b </p x=1> <3 <\x00img src=1"),
                         [("p", [("x", "1")], True), ("img", [("src", "1")], False)])

    def test_comments(self) -> None:
        """<!-- --> (and --!>), the empty <!--> and <!--->, bogus comments from
        <! and </ (end at the first '>'), processing instructions."""
        toks = list(htmltokens.tokens("<!--a--><!--><!---><!--b--!><!c><?d?></ e>"))
        self.assertEqual([t[:2] for t in toks],
                         [("comment", "a"), ("comment", ""), ("comment", ""),
                          ("comment", "b"), ("comment", "c"), ("pi", "d?"), ("comment", " e")])
        self.assertEqual([t[3] for t in toks if t[0] == "comment"],
                         [False, False, False, False, True, True])
        self.assertEqual(tags("<!--<img src=x>--><b>"), [("b", [], False)])

    def test_attribute_value_states(self) -> None:
        """Starting inside an attribute value, the attributes after its end
        make a tag named ''; quoted states need the closing quote."""
        self.assertEqual(tags('x" onclick="a()', htmltokens.DQUOTED),
                         [("", [("onclick", "a()")], False)])
        self.assertEqual(tags("x onclick=a()>", htmltokens.UNQUOTED),
                         [("", [("onclick", "a()")], False)])
        self.assertEqual(tags("no quote here", htmltokens.SQUOTED), [])


class JavaScriptTests(SynchronousTestCase):
    """L{jstokens.scan} finds sinks in text that is JavaScript."""

    def test_sinks(self) -> None:
        """Calls, .call/.apply, grouped and bracketed names, tagged templates,
        escapes in names, assignments to location after a break-out."""
        scan = lambda t, opened=False: jstokens.scan(t, 0, opened, len(t))
        self.assertEqual(scan("alert(1)"), "alert")
        self.assertEqual(scan("confirm.call(null,1)"), "confirm")
        self.assertEqual(scan("(alert)(1)"), "alert")
        self.assertEqual(scan("window['alert'](1)"), "alert")
        self.assertEqual(scan("alert`1`"), "alert")
        self.assertEqual(scan("[].sort.call`${alert}1`"), "alert")
        self.assertEqual(scan("\\u0061lert(1)"), "alert")
        self.assertEqual(scan("-alert(1)//", opened=True), "alert")
        self.assertEqual(scan(";location='//evil'", opened=True), "location=")
        self.assertEqual(scan("));if(x)alert(1)}catch(e){}//", opened=True), "alert")

    def test_not_javascript(self) -> None:
        """Prose stops being JavaScript at its second word; valid code without
        a sink gives ''."""
        self.assertIsNone(jstokens.scan("Please confirm (by email)", 0, False, 25))
        self.assertEqual(jstokens.scan("a = b + 1;", 0, False, 10), "")
        self.assertTrue(jstokens.is_code("x = /re+/g.test(s); y++", 0, 23))
        self.assertFalse(jstokens.is_code("tag: put it at the end", 0, 22))


class HTMLContextTests(SynchronousTestCase):
    """Attacks in HTML text."""

    def assertFlags(self, text: str, reason: str, paranoia: int = 1) -> None:
        self.assertEqual(xss.detect(text, paranoia), reason, text)

    def test_tags(self) -> None:
        """Script-running tags with attributes or content; SVG and MathML."""
        self.assertFlags("<script>alert(1)</script>", "tag:script@html")
        self.assertFlags("<SCRIPT SRC=//evil/x.js></SCRIPT>", "tag:script@html")
        self.assertFlags("<iframe src=//evil>", "tag:iframe@html")
        self.assertFlags('<object data="x.swf">', "tag:object@html")
        self.assertFlags("<svg/onload=alert(1)>", "tag:svg@html")
        self.assertFlags("<svg><a xlink:href=javascript:alert(1)>x</a></svg>", "tag:svg@html")
        self.assertFlags("<svg>", "tag:svg@html")
        icon = '<svg width="24" viewBox="0 0 24 24"><path d="M1 2L3 4z"/></svg>'
        self.assertFlags(icon, None)
        self.assertFlags(icon, "tag:svg@html", paranoia=2)
        self.assertFlags('<svg viewBox="0 0 9 9"><path onclick=alert(1) d="M1"/></svg>',
                         "event:onclick@html")
        self.assertFlags('<v:vmlframe src="x.fml"/>', "tag:vmlframe@html")
        self.assertFlags("<scr\x00ipt>alert(1)</script>", "tag:script@html")
        self.assertFlags('<meta http-equiv="refresh" content="0;url=//evil">', "tag:meta@html")

    def test_attributes(self) -> None:
        """Event handlers, active URLs however written, CSS that runs code."""
        self.assertFlags("<img src=x onerror=alert(1)>", "event:onerror@html")
        self.assertFlags("<body onload=init()>", None)
        self.assertFlags("<body onload=init()>", "event:onload@html", paranoia=2)
        self.assertFlags("<input onfocus=save() autofocus>", "event:onfocus@html")
        self.assertFlags("<details open ontoggle=print()>", "event:ontoggle@html")
        self.assertIsNone(xss.detect("<details open><summary>More</summary>text</details>"))
        self.assertIsNone(xss.detect('<details ontoggle="track()"><summary>FAQ</summary>'))
        self.assertFlags("<x onbeforehellfreezes=f(1)>", "event:onbeforehellfreezes@html")
        self.assertFlags('<a href="javascript:alert(1)">x</a>', "url:href@html")
        self.assertFlags('<a href=" &#x6A;ava&#09;script&colon;alert(1)">', "url:href@html")
        self.assertFlags('<a href="java\x01script:alert(1)">', "url:href@html")
        self.assertFlags('<iframe/src="data:text/html,x">', "tag:iframe@html")
        self.assertFlags('<a href="data:text/html;base64,PHN2Zz4=">x</a>', "url:href@html")
        self.assertFlags('<div style="width:expression(alert(1))">', "style@html")
        self.assertFlags("<div style=\"x:ex/**/pression(alert(1))\">", "style@html")
        self.assertFlags("<x style=behavior:url(#default#time2)>", "style@html")
        self.assertFlags('<iframe srcdoc="&lt;img src=x onerror=alert(1)&gt;">', "tag:iframe@html")
        self.assertFlags('<p srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;">', "srcdoc@html")
        self.assertFlags("</a onmousemove=alert(1)>", "event:onmousemove@html")
        self.assertFlags('<x ev:event="load" ev:handler="#x"/>', "event:ev:handler@html")

    def test_style_sheets_and_meta(self) -> None:
        """A <style> element counts when its CSS runs code, loads more or plays
        parsing tricks, not as plain CSS in HTML e-mail; a <meta> when it
        refreshes, sets cookies or picks a charset that hides markup."""
        self.assertFlags("<style>@import 'x.css';</style>", "tag:style@html")
        self.assertFlags("<style>li{list-style-image:url(javascript:x)}</style>", "tag:style@html")
        self.assertFlags('<style type="text/javascript">alert(1)</style>', "tag:style@html")
        self.assertFlags("<style>#x{font:a[b;c:d;} #y];e:f;{}</style>", "tag:style@html")
        self.assertFlags("<style>*{color:\\72 ed}</style>", "tag:style@html")
        self.assertFlags('<style type="text/css"><!-- body { color: #333 } a[href] { x: y } --></style>',
                         None)
        self.assertFlags('<meta http-equiv="Content-Type" content="text/html; charset=utf-8">', None)
        self.assertFlags('<meta charset="UTF-8">', None)
        self.assertFlags('<meta charset="x-imap4-modified-utf7">', "tag:meta@html")
        self.assertFlags('<meta http-equiv="Set-Cookie" content="a=b">', "tag:meta@html")

    def test_filter_evasions(self) -> None:
        """What a filter that deletes <script> leaves behind."""
        self.assertFlags("<scr<script>ipt>alert(1)</scr</script>ipt>", "tag:script@html")

    def test_comments_and_declarations(self) -> None:
        """Conditional comments, bogus comments read on, XML style sheets,
        document type subsets."""
        self.assertFlags("<!--[if IE]><script>alert(1)</script><![endif]-->", "tag:script@html")
        self.assertFlags("<!<script>alert(1)</script>", "tag:script@html")
        self.assertFlags('<?xml-stylesheet href="x.xsl"?>', "pi@html")
        self.assertFlags('<!DOCTYPE x [<!ENTITY x SYSTEM "http://evil">]>', "doctype@html")


class OtherContextTests(SynchronousTestCase):
    """Attacks inside attribute values, whole URLs, CSS and JavaScript."""

    def test_attribute_values(self) -> None:
        """Break-outs of an attribute value add an event handler or a style."""
        self.assertEqual(xss.detect('" onmouseover="alert(1)'), "event:onmouseover@attr-dquote")
        self.assertEqual(xss.detect("' autofocus onfocus=x() x='"), "event:onfocus@attr-squote")
        self.assertEqual(xss.detect("x onerror=alert(1)>"), "event:onerror@attr-unquoted")
        self.assertEqual(xss.detect('"onwheel=f(1)'), "event:onwheel@attr-dquote")
        self.assertEqual(xss.detect("x\" style=\"x:expression(alert(1))"), "style@attr-dquote")

    def test_whole_values(self) -> None:
        """A value that is a script URL with code, a data URL of a document,
        CSS that runs code, JavaScript calling a sink, JSFuck."""
        self.assertEqual(xss.detect("javascript:alert(1)"), "scheme:javascript@url")
        self.assertEqual(xss.detect("  JaVaScRiPt:\nsetInterval('x')"), "scheme:javascript@url")
        self.assertEqual(xss.detect("vbscript:msgbox(1)"), "scheme:vbscript@url")
        self.assertEqual(xss.detect("data:text/html;base64,PHNjcmlwdD4="), "scheme:data@url")
        self.assertEqual(xss.detect("x:expression(alert(1))"), "style@css")
        self.assertEqual(xss.detect("confirm.call(null,1)"), "sink:confirm@js")
        self.assertEqual(xss.detect("eval(atob('YWxlcnQoMSk='))"), "sink:atob@js")
        self.assertEqual(xss.detect("'-alert(1)//"), "sink:alert@js-squote")
        self.assertEqual(xss.detect('\\";alert(1);//'), "sink:alert@js-dquote")
        self.assertEqual(xss.detect('";document.location="//evil"//'), "sink:location=@js-dquote")
        self.assertEqual(xss.detect("x`;alert(1)//"), "sink:alert@js-backtick")
        self.assertEqual(xss.detect("`${alert(1)}`"), "sink:alert@js")
        self.assertEqual(xss.detect("+!![]+[]+(![]+[])[+[]]"), "jsfuck@js")

    def test_padding(self) -> None:
        """Markup after a long padding is found."""
        self.assertEqual(xss.detect("A" * 200000 + "<script>alert(1)</script>"),
                         "tag:script@html")


class BenignTests(SynchronousTestCase):
    """Ordinary text, markup and code are let through at paranoia 1."""

    BENIGN: ClassVar[list[str]] = [
        "<3", "I <3 NY", "h2<h1", "a < b and b > c", "5 < x < 10", "<< previous | next >>",
        "<enter type here>", "Dear <name>, your appointment is on <date>.",
        "John Smith <john.smith@example.com>", "List<String> names = new ArrayList<>();",
        "#include <stdio.h>", "template <typename T> T max(T a, T b)",
        "This is a <b>bold</b> statement.", '<a href="https://example.com/">link</a>',
        '<img src="cat.jpg" alt="A cat" width="300">', '<span style="color: red">Sold out</span>',
        '<div style="background-image: url(\'/img/banner.jpg\'); height: 200px"></div>',
        '<img src="data:image/png;base64,iVBORw0KGgo=" alt="dot">', "<br/>Line<br />two",
        '<button onclick="save()">Save</button>', '<a href="javascript:void(0)">menu</a>',
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "<!DOCTYPE html>", "<!-- TODO -->",
        "Learn about the <script> tag: put it at the end of <body> or use defer.",
        "JavaScript: Basics of JavaScript Language", "JavaScript: the good parts (2008)",
        "In the console, type alert(\"hi\") to test that JS runs at all.",
        "The onload event fires when the page has finished loading.",
        "Add onclick=handleClick to the button and you're done.",
        "Regular expression (regex) tutorial", "The behavior of the cache changed.",
        "Please confirm (by email) your order", "He said \"alert me\" when done",
        "const res = await fetch('/api/items');", "f = open('data.txt')",
        "window.location.href = \"/login\";", "console.log(document.cookie)",
        "It's 5 o'clock; don't be late", "Press &lt;Enter&gt; to continue",
        "{\"html\": \"<p>Hello <b>world</b></p>\"}", "x = a ? b : c;",
    ]

    def test_benign(self) -> None:
        """None of these is flagged."""
        for text in self.BENIGN:
            self.assertIsNone(xss.detect(text), text)

    def test_jsx(self) -> None:
        """React components: handlers bound to names and arrow functions run nothing as HTML."""
        for text in ('return <button className="btn" onClick={onClick}>{label}</button>;',
                     "<input onChange={e => setName(e.target.value)} value={name} />",
                     "<a onClick={() => setOpen(!open)}>menu</a>",
                     "<form onSubmit={this.handleSubmit}>", "<li onMouseEnter={(e)}>",
                     "Don't forget:\n```jsx\nreturn <button onClick={onClick}>{label}</button>;\n```"):
            self.assertIsNone(xss.detect(text), text)
        for text in ("<img src=x onerror={alert(1)}>", "<img src=x onerror={(alert(1))}>",
                     '<a onmouseover="{location=name}">x</a>',
                     # \v and ` split and quote values only for old IE: browsers
                     # run what follows as the handler's code.
                     "<img src=x onerror={x}\x0bprint()>", "<img src=x onerror={}\x0bimport(name)>",
                     "<img src=x onerror=`{x}`;print()>", '" onfocus={}\x0bprint() autofocus x="'):
            self.assertIsNotNone(xss.detect(text), text)

    def test_code_in_string_sinks(self) -> None:
        """jQuery's eval-likes called with a string count like eval."""
        for text in ("<img src=x onerror=$.globalEval('alert`1`')>",
                     "<img src=x onerror=$.getScript(name)>",
                     "<details open onbeforetoggle=print()>"):
            self.assertIsNotNone(xss.detect(text), text)

    def test_paranoia(self) -> None:
        """Paranoia 2 also flags simple handlers, forms and any style."""
        self.assertIsNotNone(xss.detect('<button onclick="save()">', 2))
        self.assertIsNotNone(xss.detect('<form action="/search">', 2))
        self.assertIsNotNone(xss.detect('<span style="color: red">', 2))


HTML_FRAGMENTS = [
    "<", ">", "</", "/>", "<!--", "-->", "<!", "<?", "?>", "'", '"', "`", "=", " ", "/", "&#",
    "&#x6a;", "&colon;", "&Tab;", "&lt;", "script", "img", "svg", "a", "iframe", "style",
    "src", "href", "onerror", "onload", "onx", "alert(1)", "javascript:", "java\tscript:",
    "vbscript:", "data:", "data:text/html,", "expression(", "behavior:url(", "-moz-binding:",
    "x", "1", "(", ")", ";", "\\u0061", "alert", "eval", "location", "cookie", "![]", "+[]",
    "[", "]", "{", "}", "${", "\x00", "\x0b", "\t", "\n", "\ufffd", "İ", "\u212a",
    "-moz-", "binding:", "behavior:", "url(", "\\7a", "\\72", "\\65 ", ":", "x:",
    "&lt", "&gt", "&amp", "srcdoc", "title", "autofocus", "onfocus",
]


@st.composite
def html_soup(draw) -> str:
    """Text made of HTML and JavaScript fragments: it reaches the rules often."""
    parts = draw(st.lists(st.sampled_from(HTML_FRAGMENTS), min_size=1, max_size=14))
    text = "".join(parts)
    if draw(st.booleans()):
        text = text.upper()
    return text


ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=300)


def _hyperscan(pattern: str, utf8: bool) -> hyperscan.Database:
    db = hyperscan.Database()
    flags = hyperscan.HS_FLAG_SINGLEMATCH | (hyperscan.HS_FLAG_UTF8 if utf8 else 0)
    db.compile(expressions=[pattern.encode()], ids=[1], elements=1, flags=[flags])
    return db


def _hs_matches(db: hyperscan.Database, text: str, utf8: bool) -> bool:
    hits: list[int] = []
    data = text.encode("utf-8", "strict" if utf8 else "surrogatepass")
    db.scan(data, match_event_handler=lambda *a: hits.append(1))
    return bool(hits)


class PrefilterTests(SynchronousTestCase):
    """L{xss.PREFILTER} matches every text that L{xss.detect} flags, in
    Python's re and in hyperscan, and rejects plain values."""

    def setUp(self) -> None:
        self.pattern = re.compile(xss.PREFILTER)
        self.bytes_db = _hyperscan(xss.PREFILTER, utf8=False)
        self.utf8_db = _hyperscan(xss.PREFILTER, utf8=True)

    def check(self, text: str) -> None:
        for paranoia in (1, 2):
            if xss.detect(text, paranoia):
                self.assertTrue(self.pattern.search(text), text)
                self.assertTrue(_hs_matches(self.bytes_db, text, utf8=False), text)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    continue
                self.assertTrue(_hs_matches(self.utf8_db, text, utf8=True), text)

    def test_rejects_plain_values(self) -> None:
        """Ids, words, numbers, e-mail addresses, prose: no match."""
        for text in ("12345", "hello world", "john.doe@example.com", "O'Reilly",
                     "Take a left (1 mile)", "2024-03-15T15:45:00Z", "SKU-4421-BLK-XL"):
            self.assertIsNone(self.pattern.search(text), text)

    def test_flagged_examples(self) -> None:
        """Attack examples of these tests match."""
        for text in ['" onmouseover\x0b="alert(1)', "j\tava\nscript:alert(1)",
                     '" srcdoc="&ltscript src=//evil/x.js&gt&lt/script&gt',
                     "&#106;avascript:alert(1)", "\\u0061lert(1)", "+!![]+[]",
                     "<svg onload=alert(1)>", "x:expression(alert(1))"]:
            self.check(text)
            self.assertTrue(self.pattern.search(text), text)

    @PROPERTY
    @given(html_soup())
    def test_html_soup(self, text: str) -> None:
        """Detected HTML-like text always matches the prefilter."""
        self.check(text)

    @PROPERTY
    @given(ANY_TEXT)
    def test_any_text(self, text: str) -> None:
        """Detected arbitrary text always matches the prefilter."""
        self.check(text)


class RobustnessTests(SynchronousTestCase):
    """L{xss.detect} never raises and returns a short reason or None."""

    @PROPERTY
    @given(ANY_TEXT, st.integers(min_value=1, max_value=4))
    def test_any_text(self, text: str, paranoia: int) -> None:
        """Arbitrary text, surrogates included."""
        result = xss.detect(text, paranoia)
        self.assertTrue(result is None or (isinstance(result, str) and "@" in result))

    @PROPERTY
    @given(html_soup(), st.integers(min_value=1, max_value=4))
    def test_html_soup(self, text: str, paranoia: int) -> None:
        """HTML-like text, which drives the readers deep."""
        result = xss.detect(text, paranoia)
        self.assertTrue(result is None or isinstance(result, str))

    def test_large_inputs(self) -> None:
        """Huge and deeply nested values are read within their bounds."""
        self.assertIsNone(xss.detect("<" * 200000))
        self.assertIsNone(xss.detect("(" * 200000 + "x"))
        self.assertIsNone(xss.detect("<a " + "b=c " * 100000 + ">"))
        self.assertIsNone(xss.detect("<!--" * 50000))
        self.assertIsNone(xss.detect("'" * 100000 + "x"))
