"""Tests for L{veil.waf.sqli} and its tokenizer L{veil.waf.sqltokens}."""

from __future__ import annotations

import re
from typing import ClassVar

import hyperscan
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf import sqli
from veil.waf.sqltokens import closing_quote, tokens

PROPERTY = settings(max_examples=600, derandomize=True, deadline=None, database=None)


def kinds(text: str) -> str:
    """The token kinds of C{text}, as one string."""
    return "".join(t[0] for t in tokens(text))


class TokenizerTests(SynchronousTestCase):
    """L{tokens} reads SQL as a server's lexer would, one token class each."""

    def test_numbers(self) -> None:
        """Decimals, exponents, hex and binary literals are numbers; digits glued
        to a keyword are a number and the keyword; other digit-led words are names."""
        self.assertEqual(list(tokens("1 -2.5 .5 1e3 0x4F 0b101")),
                         [("1", "1"), ("o", "-"), ("1", "2.5"), ("1", ".5"), ("1", "1e3"),
                          ("1", "0x4F"), ("1", "0b101")])
        self.assertEqual(list(tokens("1UNION 5th 90s")),
                         [("1", "1"), ("k", "UNION"), ("n", "5th"), ("n", "90s")])
        self.assertEqual(list(tokens("1e1union")), [("1", "1e1"), ("k", "UNION")])

    def test_strings(self) -> None:
        """Quoted strings, with prefixes, doubled quotes and backslash escapes;
        a string left open runs to the end as kind S."""
        self.assertEqual(kinds("'a' \"b\" N'c' _utf8'd' x'41' $$e$$"), "ssssss")
        self.assertEqual(list(tokens("'it''s' 'a\\'b'")), [("s", "'it''s'"), ("s", "'a\\'b'")])
        self.assertEqual(list(tokens("x 'open to the end")), [("n", "x"), ("S", "'open to the end")])
        self.assertEqual(list(tokens("'ab''")), [("S", "'ab''")])

    def test_names_keywords_functions(self) -> None:
        """ASCII keywords in any case; other words are names; a word directly
        followed by '(' is a call, a known function with spaces before '(' too,
        and a keyword stays a keyword."""
        self.assertEqual(list(tokens("SeLeCt foo `bar` ünïon")),
                         [("k", "SELECT"), ("n", "foo"), ("n", "`bar`"), ("n", "ünïon")])
        self.assertEqual(list(tokens("foo(1) sleep (2) left (3) union(")),
                         [("f", "foo"), ("1", "1"), (")", ")"), ("f", "sleep"), ("1", "2"),
                          (")", ")"), ("k", "LEFT"), ("(", "("), ("1", "3"), (")", ")"),
                          ("k", "UNION"), ("(", "(")])
        self.assertEqual(list(tokens("ſelect")), [("n", "ſelect")])

    def test_operators_and_variables(self) -> None:
        """Multi-character operators, && and || as logic, @ and @@ variables."""
        self.assertEqual(list(tokens("a<=>b != c || d && @x @@version ::")),
                         [("n", "a"), ("o", "<=>"), ("n", "b"), ("o", "!="), ("n", "c"),
                          ("&", "||"), ("n", "d"), ("&", "&&"), ("v", "@x"),
                          ("v", "@@version"), ("o", "::")])

    def test_comments(self) -> None:
        """Line comments end at a newline; a closed block comment is a gap; an
        open one runs to the end; MySQL versioned comments are read as SQL."""
        self.assertEqual(list(tokens("1 -- x\nunion # y\n2")),
                         [("1", "1"), ("c", "-- x"), ("k", "UNION"), ("c", "# y"), ("1", "2")])
        self.assertEqual(kinds("1/**/union/*x*/select"), "1kk")
        self.assertEqual(list(tokens("1 /* open")), [("1", "1"), ("c", "/* open")])
        self.assertEqual(list(tokens("/*!50000union*/ 1*/2")),
                         [("!", "/*!"), ("k", "UNION"), ("1", "1"), ("o", "*"), ("o", "/"),
                          ("1", "2")])
        # A version has five or six digits; other digits are content.
        self.assertEqual(list(tokens("/*!1 union*/")), [("!", "/*!"), ("1", "1"), ("k", "UNION")])

    def test_whitespace_and_others(self) -> None:
        """NUL and U+FFFD separate tokens as whitespace does; anything else
        becomes an 'x' token, so every character belongs to a token."""
        self.assertEqual(kinds("1\x00union\ufffdselect\u2003[x]"), "1kkxnx")

    def test_closing_quote(self) -> None:
        """The quote that ends the application's string: not doubled, not
        escaped by a backslash; -1 when there is none."""
        self.assertEqual(closing_quote("ab'c", "'", 100), 3)
        self.assertEqual(closing_quote("a''b'c", "'", 100), 5)
        self.assertEqual(closing_quote("a\\'b'c", "'", 100), 5)
        self.assertEqual(closing_quote("a\\\\'b", "'", 100), 4)
        self.assertEqual(closing_quote("abc", "'", 100), -1)
        self.assertEqual(closing_quote("''''", "'", 100), -1)
        self.assertEqual(closing_quote("abc'", "'", 2), -1)


class AsIsContextTests(SynchronousTestCase):
    """Injections where the value stands where a number or a name goes."""

    def assertFlags(self, text: str, rule: str) -> None:
        self.assertEqual(sqli.detect(text), rule + "@as-is", text)

    def test_union(self) -> None:
        """UNION [ALL] SELECT with a column, however sloppy the rest is."""
        self.assertFlags("-1 union select 1,2,3--", "union")
        self.assertFlags("1 UNION ALL SELECT NULL,NULL", "union")
        self.assertFlags("9 union select 1,convert(version() using latin1),3", "union")
        self.assertFlags("1 /*!UNION*/ /*!SELECT*/ password FROM users", "union")
        self.assertFlags("1) union (select 1)", "union")

    def test_tautology_and_boolean(self) -> None:
        """A logic operator joining a constant comparison, a call or a variable."""
        self.assertFlags("1 or 1=1", "tautology")
        self.assertFlags("1234 OR 1=1", "tautology")
        self.assertFlags("HOPE AND 8=3", "tautology")
        self.assertFlags("1 and ascii(substring(password,1,1))>64", "boolean")
        self.assertFlags("1 and ascii(substring(user(),1,1))>64", "info-function")
        self.assertFlags("1) or (1=1", "tautology")
        self.assertFlags("AND 1=1", "tautology")
        self.assertFlags("1 and 1 not between 0 and 1", "tautology")
        self.assertFlags("HOPE AND (8)=(3)", "tautology")
        self.assertFlags("456 + ASCII(SUBSTRING(passwd,1,1))-10", "extraction")

    def test_stacked_and_statements(self) -> None:
        """A statement after ';' (or after an operand, as T-SQL allows)."""
        self.assertFlags("1; DROP TABLE users", "stacked")
        self.assertFlags("1; exec xp_cmdshell 'dir'", "stacked")
        self.assertFlags("1 WAITFOR DELAY '0:0:5'", "stacked")
        self.assertFlags("1; declare @s varchar(8000)", "stacked")
        self.assertFlags("EXEC sp_addlogin 'x'", "statement")
        self.assertFlags("1 exec 'xp_cmdshell ''dir'' '", "stacked")
        self.assertEqual(sqli.detect("x' exec 'sp_who"), "stacked@squote")
        self.assertFlags("DROP TABLE users; --", "statement")

    def test_functions_files_queries(self) -> None:
        """Time and file functions, INTO OUTFILE, sub-queries, probing SELECTs."""
        self.assertFlags("sleep(5)", "function")
        self.assertFlags("1 and benchmark(5000000,md5(1))", "function")
        self.assertFlags("1 into outfile '/tmp/x'", "into-file")
        self.assertFlags("(select id from users limit 1,1)", "subquery")
        self.assertFlags("select @@version", "select")
        self.assertFlags("select 1,sin(1),2 from bar where", "select")
        self.assertFlags("MID(@@hostname, 1, 1)", "system-variable")
        self.assertFlags("DATABASE() LIKE SCHEMA()", "info-function")

    def test_clauses_comments_case(self) -> None:
        """Clauses after a literal, comments after an expression, CASE ... END."""
        self.assertFlags("1 order by 3--", "clause")
        self.assertFlags("1 group by 1 having 1=1", "tautology")
        self.assertFlags("1 * 1/*", "comment")
        self.assertFlags("1--", "comment")
        self.assertFlags("case 1 when 2 then 2 end", "case")
        self.assertFlags("if(1=1,2,3)", "condition")
        self.assertFlags("FOO,IIF(2510=9436,FOO,1/0)", "condition")

    def test_paranoia(self) -> None:
        """Weaker shapes are flagged from paranoia 2 on."""
        for text in ("laptops order by price", "select items from list", "tea or coffee = x"):
            self.assertIsNone(sqli.detect(text), text)
            self.assertIsNotNone(sqli.detect(text, paranoia=2), text)


class QuotedContextTests(SynchronousTestCase):
    """Injections that close the application's quoted string."""

    def test_single_quote(self) -> None:
        """Break-outs of a single-quoted string."""
        cases = {
            "1' or '1'='1": "tautology@squote",
            "admin'--": "quote-comment@squote",
            "admin')#": "quote-comment@squote",
            "x' AND 'B": "boolean@squote",
            "a'+'b": "quote-break@squote",
            "'='": "quote-break@squote",
            "x' order by name--": "clause@squote",
            "x'; select null,password from users; ": "stacked@squote",
            "x' or 1 --": "boolean@squote",
            "x' WAITFOR DELAY '0:0:5'--": "stacked@squote",
            "x' or name LIKE('%a%')--": "boolean@squote",
            "1' IN BOOLEAN MODE) RLIKE (SELECT (CASE WHEN (1=1) THEN 1 ELSE 0x28 END))#":
                "subquery@squote",
            "AAAA' UNION SELECT username || ':' || password FROM users": "union@squote",
        }
        for text, rule in cases.items():
            self.assertEqual(sqli.detect(text), rule, text)

    def test_double_quote(self) -> None:
        """Break-outs of a double-quoted string need a comparison or logic."""
        self.assertEqual(sqli.detect('1" or "1"="1'), "tautology@dquote")
        self.assertEqual(sqli.detect('x" or 1=1 --'), "tautology@dquote")
        # A word quoted in prose looks like a break-out, and is let through.
        for text in ('"LIKE" STAMP', 'SMALL "&" SIGN', '"MOD"'):
            self.assertIsNone(sqli.detect(text), text)

    def test_padding(self) -> None:
        """A break-out after a long padding is found (quotes are looked for
        in the first megabyte)."""
        self.assertEqual(sqli.detect("A" * 200000 + "' UNION SELECT 1--"), "union@squote")
        self.assertIsNone(sqli.detect("A" * (sqli.MAX_SCAN + 10) + "' UNION SELECT 1--"))


class NaturalLanguageTests(SynchronousTestCase):
    """Ordinary text with SQL words, quotes and punctuation is let through."""

    BENIGN: ClassVar[list[str]] = [
        "select the best union of colors", "O'Reilly", "Take a left (1 mile)",
        "drop me a line or call", "1-2 days", "john+or@var.es", "$19.99 (was $24.99)",
        "black and white", "1950 or 1960", "true or false", "10 AND UNDER",
        "It's a nice day, isn't it? Let's go to the park.", "Y'ALL COME BACK NOW",
        "Rock 'n' roll", "He said 'yes' or 'no'", "'best' and 'cheapest'",
        "union station parking", "how to delete facebook account", "insert coin",
        "Where is my order? It's been 10 days.", "Can I return an item bought on sale?",
        "Update: after 6 months the left earbud stopped charging.",
        "x = 5 or more items qualify", "5' x 8' rug", "He's 6' 2\" and she's 5' 4\"",
        "Order #48213 -- please cancel", "1,2,3,4,5", "(555) 123-4567", "2024-03-15",
        "Select size: 'S', 'M' or 'L'", "Reply 'YES' to confirm or 'NO' to cancel",
        "I want to drop the yoga class and join pilates", "Limit 2 per customer.",
        "O'connors UNION selected a few friends", "1 I like having true friends",
        "Please select 2 items", "use python", "exec noun", "Done; go home",
        "BLUE BROWN -BABY -TODDLER -DRESSES' --INFANT -CHILD -KID",
        "FOO BAR'# BLAH", "DRESS WITH HAT 18';", "I' IS NOT A PLASTIC BAG",
        "3 - 2 -- easy", "(a) or b -- whichever is cheaper", "'Hello' -- she said",
        "'Yes' or 'No'?", "\"1\" = \"1\"", "20% off (limited time) -- today only",
        "is 'exec' short for executive", "what does 'execute' mean here",
    ]

    CODE: ClassVar[list[str]] = [
        "I tried `SELECT name FROM users WHERE id = 1` in the console and it returns nothing.",
        "SELECT * FROM orders WHERE created_at >= '2024-01-01' AND status <> 'cancelled';",
        "UPDATE users SET last_login = NOW() WHERE id = ?;",
        "INSERT INTO products (name, price) VALUES (?, ?)",
        "In SQL, NULL = NULL is not true; use IS NULL.",
        "{\"select\": [\"id\", \"title\"], \"from\": \"posts\", \"limit\": 10}",
        "{'select': ['id'], 'where': {'a': 1}}",
        "if (name.equals(\"admin\")) { ... }",
        "result = eval(expr, {\"__builtins__\": {}}, {})",
    ]

    def test_natural_language(self) -> None:
        """Reviews, names, addresses, search queries and chat."""
        for text in self.BENIGN:
            self.assertIsNone(sqli.detect(text), text)

    def test_code_in_posts(self) -> None:
        """SQL and other code pasted into a post, with or without prose."""
        for text in self.CODE:
            self.assertIsNone(sqli.detect(text), text)


SQL_FRAGMENTS = [
    "1", "0x41", "'a'", '"b"', "'", '"', "`", "x", "@@version", "@v", "(", ")", ",", ";", "--",
    "#", "/*", "*/", "/*!50000", "=", "<", ">", "<=>", "-", "+", "*", "/", "||", "&&", "!",
    "union", "select", "and", "or", "xor", "not", "is", "null", "true", "like", "in",
    "between", "order", "by", "group", "having", "limit", "from", "where", "into", "outfile",
    "sleep(", "benchmark(", "version()", "char(", "if(", "case", "when", "then", "end",
    "exec", "xp_cmdshell", "drop", "table", "declare", "waitfor", "delay", "insert", "update",
    "set", "delete", "ſelect", "UNİON", "1UNION", "\u2003", "\x00", "\ufffd", "\t", "\n",
]
SEPARATORS = [" ", "", "/**/", "\t", "\n", "  ", "\x0b", "\xa0"]


@st.composite
def sql_soup(draw) -> str:
    """Text made of SQL fragments: it reaches L{sqli.detect}'s rules often."""
    parts = draw(st.lists(st.tuples(st.sampled_from(SQL_FRAGMENTS), st.sampled_from(SEPARATORS)),
                          min_size=1, max_size=12))
    text = "".join(a + b for a, b in parts)
    case = draw(st.sampled_from(["keep", "upper", "mixed"]))
    if case == "upper":
        text = text.upper()
    elif case == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
        text = "".join(c.upper() if f else c for c, f in zip(text, flips))
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
    """L{sqli.PREFILTER} matches every text that L{sqli.detect} flags, in
    Python's re and in hyperscan, and rejects plain values."""

    def setUp(self) -> None:
        self.pattern = re.compile(sqli.PREFILTER)
        self.bytes_db = _hyperscan(sqli.PREFILTER, utf8=False)
        self.utf8_db = _hyperscan(sqli.PREFILTER, utf8=True)

    def check(self, text: str) -> None:
        for paranoia in (1, 2):
            if sqli.detect(text, paranoia):
                self.assertTrue(self.pattern.search(text), text)
                self.assertTrue(_hs_matches(self.bytes_db, text, utf8=False), text)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    continue
                self.assertTrue(_hs_matches(self.utf8_db, text, utf8=True), text)

    def test_rejects_plain_values(self) -> None:
        """Ids, words, numbers, e-mail addresses, most prose: no match."""
        for text in ("12345", "hello world", "john.doe@example.com", "tea or coffee",
                     "best pizza near me", "2024-03-15T15:45:00Z", "SKU-4421-BLK-XL"):
            self.assertIsNone(self.pattern.search(text), text)

    def test_flagged_examples(self) -> None:
        """Every attack example of these tests matches."""
        for text in ["1 or 1=1", "1UNION SELECT 2", "1 order/**/by 1", "x is not null or 1",
                     "admin'--", "sleep(5)", "@@version--", "1;drop table x"]:
            self.check(text)
            self.assertTrue(self.pattern.search(text), text)

    @PROPERTY
    @given(sql_soup())
    def test_sql_soup(self, text: str) -> None:
        """Detected SQL-like text always matches the prefilter."""
        self.check(text)

    @PROPERTY
    @given(ANY_TEXT)
    def test_any_text(self, text: str) -> None:
        """Detected arbitrary text always matches the prefilter."""
        self.check(text)


class PathTests(SynchronousTestCase):
    """A text that starts with a slash (a path, a request target) and holds
    no quote is answered at once, as reading it whole would answer."""

    @PROPERTY
    @given(st.one_of(sql_soup(), ANY_TEXT), st.integers(min_value=1, max_value=4))
    def test_same_answer(self, tail: str, paranoia: int) -> None:
        """The reading as it is finds nothing in such a text, at any level."""
        text = "/" + tail.replace("'", "").replace('"', "")
        assume(not text.startswith("/*"))
        self.assertIsNone(sqli._judge(sqli._parse(tokens(text, 0, sqli.MAX_CHARS), ""), "",
                                      paranoia))
        self.assertIsNone(sqli.detect(text, paranoia))

    def test_comment_and_quotes_read(self) -> None:
        """A leading comment, or a quote anywhere, is read as before."""
        self.assertEqual(sqli.detect("/**/union select 1,2"), "union@as-is")
        self.assertEqual(sqli.detect("/item?id=1' or '1'='1"), "tautology@squote")


class RobustnessTests(SynchronousTestCase):
    """L{sqli.detect} never raises and returns a short reason or None."""

    @PROPERTY
    @given(ANY_TEXT, st.integers(min_value=1, max_value=4))
    def test_any_text(self, text: str, paranoia: int) -> None:
        """Arbitrary text, surrogates included."""
        result = sqli.detect(text, paranoia)
        self.assertTrue(result is None or (isinstance(result, str) and "@" in result))

    @PROPERTY
    @given(sql_soup(), st.integers(min_value=1, max_value=4))
    def test_sql_soup(self, text: str, paranoia: int) -> None:
        """SQL-like text, which drives the parser deep."""
        result = sqli.detect(text, paranoia)
        self.assertTrue(result is None or isinstance(result, str))

    def test_large_inputs(self) -> None:
        """Huge values and deep nesting are read within their bounds."""
        self.assertIsNone(sqli.detect("(" * 100000))
        self.assertIsNone(sqli.detect("'" * 3 + "x" * 2000000))
        self.assertEqual(sqli.detect("1+" * 5000 + "1 union select 1"), None)
        self.assertEqual(sqli.detect("1+" * 500 + "1 union select 1"), "union@as-is")
