"""Tests for L{veil.waf.transforms} and L{veil.waf.decoding}."""

from __future__ import annotations

import base64 as b64
import re
from urllib.parse import unquote_to_bytes

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf import transforms as t
from veil.waf.decoding import (
    has_invalid_escape,
    normalise_path,
    percent_decode,
    text_of,
)


def percent_decode_plainly(text: str, plus: bool = False) -> str:
    """L{percent_decode} written plainly, with the standard library: what its fast path must agree with."""
    if plus:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    if "%u" not in text and "%U" not in text:
        try:
            return text_of(unquote_to_bytes(text))
        except UnicodeEncodeError:
            pass
    return re.sub(r"(?:%[0-9A-Fa-f]{2})+|%[uU][0-9A-Fa-f]{4}",
                  lambda m: chr(int(m.group()[2:], 16)) if m.group()[1] in "uU"  # noqa: FURB166
                  else text_of(bytes.fromhex(m.group().replace("%", ""))), text)


class PercentDecodingTests(SynchronousTestCase):
    """Percent-decoding reads the forms attackers hide characters in."""

    @settings(max_examples=1000, deadline=None)
    @given(st.text("%=+ a0fFcC9E8u\n\r\ud800é", max_size=24), st.booleans())
    def test_same_as_plain(self, text: str, plus: bool) -> None:
        """Decoded in C or escape by escape, the same text comes out."""
        self.assertEqual(percent_decode(text, plus), percent_decode_plainly(text, plus))

    def test_plain_and_plus(self) -> None:
        """%XX runs are UTF-8; + is a space only where asked; text without escapes is returned as is."""
        self.assertEqual(percent_decode("caf%C3%A9%20au+lait"), "café au+lait")
        self.assertEqual(percent_decode("caf%C3%A9%20au+lait", plus=True), "café au lait")
        text = "nothing-to-do"
        self.assertIs(percent_decode(text), text)

    def test_overlong_and_iis(self) -> None:
        """Overlong UTF-8 (%c0%af) and IIS %uXXXX decode to the characters they spell."""
        self.assertEqual(percent_decode("..%c0%af..%c0%afetc"), "../../etc")
        self.assertEqual(percent_decode("%e0%80%ae%e0%80%ae/"), "../")
        self.assertEqual(percent_decode("%u002e%u002e%u2215"), "..\u2215")

    def test_invalid_bytes_and_escapes(self) -> None:
        """Stray bytes become their Latin-1 characters; invalid escapes stay as written."""
        self.assertEqual(percent_decode("%ff%fe"), "ÿþ")
        self.assertEqual(percent_decode("100%zz"), "100%zz")
        self.assertTrue(has_invalid_escape("100%zz"))
        self.assertTrue(has_invalid_escape("end%"))
        self.assertFalse(has_invalid_escape("a%20b%u0041"))
        self.assertEqual(text_of(b"\xc0\xaf\xff"), "/ÿ")


class PathNormalisationTests(SynchronousTestCase):
    """L{normalise_path} resolves what a server would resolve."""

    def test_forms(self) -> None:
        """Percent-decoding, dot segments, repeated slashes, backslashes, ; parameters and NUL."""
        cases = {
            "/a/b/../c": "/a/c",
            "/a/./b//c": "/a/b/c",
            "/%2e%2e/%2e%2e/etc/passwd": "/etc/passwd",
            "/a\\..\\b": "/b",
            "/app;jsessionid=1/x;v=2": "/app/x",
            "/ad%00min": "/admin",
            "/../../..": "/",
            "/a/b/": "/a/b/",
            "/static/x.css": "/static/x.css",
        }
        for raw, expected in cases.items():
            self.assertEqual(normalise_path(raw), expected, raw)


class TransformationTests(SynchronousTestCase):
    """Each transformation does what its name says and leaves other text alone."""

    def test_urldecode_repeated(self) -> None:
        """Decoding repeats (double encoding) up to its bound."""
        self.assertEqual(t.urldecode("%253Cscript%253E"), "<script>")
        self.assertEqual(t.urldecode("%25252525"), "%25")

    def test_htmldecode(self) -> None:
        """Numeric and named references, twice, but query strings stay as they are."""
        self.assertEqual(t.htmldecode("&lt;a&#62;&#x3c;&colon;"), "<a><:")
        self.assertEqual(t.htmldecode("&amp;lt;svg&amp;gt;"), "<svg>")
        self.assertEqual(t.htmldecode("a=1&para=2&copy=3"), "a=1&para=2&copy=3")
        self.assertEqual(t.htmldecode("&#60script"), "<script")

    def test_jsdecode(self) -> None:
        """\\u, \\u{}, \\x and escaped punctuation; \\n only where no letter follows."""
        self.assertEqual(t.jsdecode("\\u003cscript\\x3e\\u{27}\\/"), "<script>'/")
        self.assertEqual(t.jsdecode(";\\n.shell"), ";\n.shell")
        self.assertEqual(t.jsdecode("C:\\new\\temp"), "C:\\new\\temp")

    def test_base64(self) -> None:
        """Runs that decode to text are replaced; binary, hashes and words are not."""
        encoded = b64.b64encode(b"<script>alert(1)</script>").decode().rstrip("=")
        self.assertEqual(t.base64(encoded), "<script>alert(1)</script>")
        self.assertEqual(t.base64("/" + encoded), "/<script>alert(1)</script>")
        urlsafe = b64.urlsafe_b64encode(b"cat /etc/passwd;id??").decode()
        self.assertEqual(t.base64(urlsafe), "cat /etc/passwd;id??")
        binary = b64.b64encode(bytes(range(0, 256, 7))).decode()
        for text in (binary, "d41d8cd98f00b204e9800998ecf8427e", "hello world", "Mississippi"):
            self.assertEqual(t.base64(text), text)

    def test_case_and_space(self) -> None:
        """lowercase and compress."""
        self.assertEqual(t.lowercase("SeLeCt"), "select")
        self.assertEqual(t.compress("a \t\n\r  b\xa0c"), "a b c")

    def test_comments(self) -> None:
        """SQL comments become a space, MySQL executable comments keep their content; HTML comments go."""
        self.assertEqual(t.sqlcomments("un/**/ion sel/*x*/ect"), "un ion sel ect")
        self.assertEqual(t.sqlcomments("/*!50000union*/ select 1-- rest").split(),
                         ["union", "select", "1"])
        self.assertEqual(t.sqlcomments("x' #comment"), "x'  ")
        self.assertEqual(t.htmlcomments("<scr<!-- x -->ipt>"), "<script>")

    def test_nfkc_and_invisible(self) -> None:
        """Full-width forms become ASCII; zero-width and BOM characters go."""
        self.assertEqual(t.nfkc("＜ｓｃｒｉｐｔ＞"), "<script>")
        self.assertEqual(t.nfkc("java\u200bscript:\ufeffalert"), "javascript:alert")

    def test_shellquotes(self) -> None:
        """Quotes, backslashes, carets, empty expansions, $IFS and brace lists."""
        self.assertEqual(t.shellquotes("c''at /e\"tc/pa\\sswd"), "cat /etc/passwd")
        self.assertEqual(t.shellquotes("c$@at /et$?c/pas$_swd"), "cat /etc/passwd")
        self.assertEqual(t.shellquotes("w^ho^am^i"), "whoami")
        self.assertEqual(t.shellquotes("cat${IFS}/etc/passwd"), "cat /etc/passwd")
        self.assertEqual(t.shellquotes("{cat,/etc/passwd}"), "cat /etc/passwd")

    def test_small_ones(self) -> None:
        """slashes, removenulls and length."""
        self.assertEqual(t.slashes("..\\..\\win.ini"), "../../win.ini")
        self.assertEqual(t.removenulls("a\x00b"), "ab")
        self.assertEqual(t.length("héllo"), "5")

    def test_unchanged_is_same_object(self) -> None:
        """A transformation with nothing to do returns its argument itself."""
        text = "plain words only"
        for name in ("urldecode", "htmldecode", "jsdecode", "sqlcomments", "htmlcomments",
                     "nfkc", "shellquotes", "slashes", "removenulls"):
            self.assertIs(t.TRANSFORMS[name](text), text, name)


class JoinedTests(SynchronousTestCase):
    """L{t.apply_joined} keeps values apart in a joined buffer."""

    def test_separators_kept(self) -> None:
        """Removing transformations never remove a separator, so values stay in place."""
        text = t.SEP.join(["a/*", "*/b", "c'd"])
        # A comment that would span two values ends at the first one.
        self.assertEqual(t.apply_joined(t.sqlcomments, text, 2).split(t.SEP), ["a ", " b", "c'd"])
        self.assertEqual(t.apply_joined(t.shellquotes, text, 2).split(t.SEP), ["a/*", "*/b", "cd"])

    def test_decoded_separator(self) -> None:
        """A value that decodes to a separator is transformed alone, the separator replaced."""
        text = t.SEP.join(["x%1ey", "%41"])
        self.assertEqual(t.apply_joined(t.urldecode, text, 1).split(t.SEP),
                         ["x" + t.SEP_STANDIN + "y", "A"])
