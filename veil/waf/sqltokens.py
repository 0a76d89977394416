"""
The tokenizer of Veil's SQL-injection detector (L{veil.waf.sqli}).

It reads text the way a SQL server's lexer would (MySQL first, with the
T-SQL, PostgreSQL, Oracle and SQLite forms attackers use) and yields
C{(kind, text)} pairs, where C{kind} is one character:

    n   a name: a word that is no keyword, a back-quoted name, a word that
        starts with digits (C{90s}, C{5th}); C{text} is the word
    f   a function call: a word directly followed by C{(}, or a known
        function name with spaces before the C{(}; the token includes the
        C{(}, and C{text} is the name in lower case
    k   a keyword; C{text} is the keyword in upper case (see L{KEYWORDS})
    1   a number: decimal, exponent, hexadecimal C{0x..}, binary C{0b..}
    s   a closed string literal: C{'..'}, C{".."}, C{N'..'}, C{_utf8'..'},
        C{x'..'}, C{$$..$$}
    S   a string literal that runs to the end of the text (not closed)
    v   a variable: C{@name}, C{@@name}
    o   an operator: C{= <> != < > <= >= <=> + - * / % & | ^ << >> ~ ! :=
        :: ->}; C{text} is the operator
    &   C{&&} or C{||}
    ( ) , ; .
    c   a comment that ends the statement: C{--} or C{#} to the end of a
        line, or a C{/*} that is never closed; C{text} is the whole comment
    x   anything else (C{? [ ] { } \\ $}, punctuation of other scripts)
    !   the start of a MySQL versioned comment C{/*!}, whose content is
        read as SQL

Whitespace and closed C{/* .. */} comments are skipped.  MySQL's versioned
comments C{/*!50000 UNION*/} are read as their content, as MySQL does.

The tokenizer never raises; every character of the input belongs to some
token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from veil.waf.wordsets import words

#: Every keyword the grammar knows, by its category (one character):
#:   & logic   ! NOT   o word operator   i IN   w BETWEEN   z IS
#:   l literal   u unary word   U set operation   E SELECT
#:   C clause or expression word   T statement word
_KEYWORD_GROUPS = {
    "&": "AND OR XOR",
    "!": "NOT",
    "o": "DIV MOD LIKE RLIKE REGEXP GLOB SOUNDS ILIKE SIMILAR COLLATE ESCAPE MATCH "
         "AGAINST EQV IMP",
    "i": "IN",
    "w": "BETWEEN",
    "z": "IS",
    "l": "NULL TRUE FALSE UNKNOWN DEFAULT CURRENT_USER CURRENT_DATE CURRENT_TIME "
         "CURRENT_TIMESTAMP LOCALTIME LOCALTIMESTAMP SESSION_USER SYSTEM_USER "
         "UTC_DATE UTC_TIME UTC_TIMESTAMP SYSDATE ROWNUM",
    "u": "BINARY DISTINCT INTERVAL PRIOR EXISTS ANY SOME ALL",
    "U": "UNION INTERSECT EXCEPT MINUS",
    "E": "SELECT",
    "C": "FROM WHERE GROUP ORDER BY HAVING LIMIT OFFSET INTO OUTFILE DUMPFILE "
         "PROCEDURE FOR UPDATE LOCK SHARE MODE JOIN INNER OUTER LEFT RIGHT CROSS "
         "NATURAL STRAIGHT_JOIN ON USING AS ASC DESC WITH ROLLUP OVER WITHIN PARTITION "
         "TOP CASE WHEN THEN ELSE END FETCH ROWS ONLY",
    "T": "INSERT DELETE DROP CREATE ALTER TRUNCATE EXEC EXECUTE DECLARE SET USE "
         "SHUTDOWN WAITFOR GRANT REVOKE BEGIN IF PRINT CALL LOAD HANDLER REPLACE GO "
         "RENAME KILL GOTO DO",
}

#: Keyword (upper case) -> category character.
KEYWORDS: dict[str, str] = {
    w: cat for cat, words in _KEYWORD_GROUPS.items() for w in words.split()
}

#: Keywords that are also function names when a C{(} follows them directly.
FUNCTION_KEYWORDS = words("IF LEFT RIGHT REPLACE INSERT MOD MATCH LIKE GLOB REGEXP CURRENT_USER CURRENT_DATE CURRENT_TIME "
    "CURRENT_TIMESTAMP LOCALTIME LOCALTIMESTAMP SESSION_USER SYSTEM_USER UTC_DATE "
    "UTC_TIME UTC_TIMESTAMP SYSDATE DEFAULT COLLATE BINARY INTERVAL")

#: SQL functions (lower case) common in injections.  A name in this set
#: followed by C{(} is a call even with spaces between, as most SQL
#: dialects allow; any other word is a call only when C{(} follows at once.
KNOWN_FUNCTIONS = words("""
    abs acos ascii asin atan atan2 avg benchmark bin bit_length cast ceil ceiling
    char char_length character_length charindex chr coalesce concat concat_ws conv
    convert cos cot count crc32 database datalength date day db_name decode degrees
    elt exp export_set extractvalue field find_in_set floor format from_base64
    geometrycollection greatest group_concat gtid_subset hex iif ifnull instr isnull
    json_extract json_keys last_insert_id lcase least left length linestring
    load_file locate log lower lpad ltrim make_set md5 mid min max multilinestring
    multipoint multipolygon name_const now nullif oct ord pg_read_file pg_sleep pi
    polygon position pow power quote radians rand randomblob repeat replace
    reverse right round rpad rtrim schema sha sha1 sha2 sign sin sleep soundex
    space sqrt strcmp substr substring substring_index sum sys_eval sys_exec
    system_user tan to_base64 trim ucase unhex updatexml upper user user_name
    utl_http utl_inaddr uuid version xmltype if
""")


_TOKEN = re.compile(
    r"""
    (?P<ws>[\s\x00\ufffd]+)
  | (?P<xopen>/\*!(?:\d{5,6})?)
  | (?P<xclose>\*/)
  | (?P<block>/\*(?:.*?\*/)?)
  | (?P<line>--|\#)
  | (?P<str>(?:[nNxXbBeE]|_[A-Za-z0-9]+|[uU]&)?'(?:[^'\\]++|\\.|'')*+(?P<sclose>')?)
  | (?P<dstr>"(?:[^"\\]++|\\.|"")*+(?P<dclose>")?)
  | (?P<bq>`[^`]*`?)
  | (?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)
  | (?P<num>0[xX][0-9a-fA-F]+\b|0[bB][01]+\b|\d+\.?\d*[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?|\d+\.\d*)
  | (?P<dname>\d+[^\W\d][\w$]*)
  | (?P<int>\d+)
  | (?P<var>@@?(?:[\w$.]+|`[^`]*`?|'[^']*'?|"[^"]*"?)?)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<op><=>|<>|!=|<=|>=|<<|>>|:=|::|->>|->|!<|!>|[-+*/%=<>!~^&|])
  | (?P<punct>[(),;.])
  | (?P<nul>\\N)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Keywords that attackers glue to a number (1UNION SELECT, 1AND 1=1).
_GLUED = words("UNION AND OR XOR ORDER GROUP HAVING LIMIT SELECT LIKE RLIKE REGEXP DIV")

_OPEN_PAREN_AFTER = re.compile(r"[ \t\r\n\f\v]*\(")


def tokens(text: str, pos: int = 0, end: int | None = None) -> Iterator[tuple]:
    """
    Yield the tokens of C{text[pos:end]}, lazily: a caller that stops early
    pays only for what it read.
    """
    match = _TOKEN.match
    if end is None or end > len(text):
        end = len(text)
    in_versioned = False
    while pos < end:
        m = match(text, pos, end)
        kind = m.lastgroup
        start, pos = pos, m.end()
        if kind == "ws":
            continue
        if kind == "word":
            word = m.group()
            upper = word.upper() if len(word) <= 32 and word.isascii() else ""
            cat = KEYWORDS.get(upper)
            if text[pos:pos + 1] == "(" and (cat is None or upper in FUNCTION_KEYWORDS):
                pos += 1
                yield ("f", word.lower())
            elif cat is not None:
                yield ("k", upper)
            elif upper and upper.lower() in KNOWN_FUNCTIONS:
                paren = _OPEN_PAREN_AFTER.match(text, pos)
                if paren:
                    pos = paren.end()
                    yield ("f", word.lower())
                else:
                    yield ("n", word)
            else:
                yield ("n", word)
        elif kind == "int" or kind == "num":
            yield ("1", m.group())
        elif kind == "op":
            op = m.group()
            if op == "|" and text[pos:pos + 1] == "|":
                pos += 1
                yield ("&", "||")
            elif op == "&" and text[pos:pos + 1] == "&":
                pos += 1
                yield ("&", "&&")
            else:
                yield ("o", op)
        elif kind == "punct":
            p = m.group()
            yield (p, p)
        elif kind == "str":
            yield ("s" if m.group("sclose") else "S", m.group())
        elif kind == "dstr":
            yield ("s" if m.group("dclose") else "S", m.group())
        elif kind == "line":
            nl = text.find("\n", pos, end)
            pos = end if nl < 0 else nl
            yield ("c", text[start:pos])
        elif kind == "block":
            if pos - start == 2:  # never closed: a comment to the end
                yield ("c", text[start:end])
                return
        elif kind == "xopen":
            in_versioned = True
            yield ("!", "/*!")
        elif kind == "xclose":
            if in_versioned:
                in_versioned = False
            else:
                pos = start + 1
                yield ("o", "*")
        elif kind == "var":
            yield ("v", m.group())
        elif kind == "dname":
            word = m.group()
            digits = len(word) - len(word.lstrip("0123456789"))
            glued = word[digits:].upper() if word.isascii() else ""
            if glued in _GLUED:
                # 1UNION, 1AND: a number and a keyword with no space between.
                yield ("1", word[:digits])
                yield ("k", glued)
            else:
                yield ("n", word)
        elif kind == "bq":
            yield ("n", m.group())
        elif kind == "dollar":
            yield ("s", m.group())
        elif kind == "nul":
            yield ("k", "NULL")
        else:
            yield ("x", m.group())


_STRING_BODY = {
    q: re.compile(r"(?:[^Q\\]++|\\.|QQ)*+Q".replace("Q", q), re.DOTALL) for q in "'\""
}


def closing_quote(text: str, quote: str, limit: int) -> int:
    """
    The index just after the quote that closes a string literal which
    starts before C{text} (the application's own opening quote), or -1:
    the first C{quote} in C{text[:limit]} that is neither escaped by a
    backslash nor doubled.  Linear in the length searched.
    """
    if quote not in text:
        return -1
    m = _STRING_BODY[quote].match(text, 0, limit)
    return m.end() if m else -1
