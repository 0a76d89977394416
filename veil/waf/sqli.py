"""
Veil's SQL-injection detector.

An injected value ends up inside an application's SQL statement in one of
three places: where a literal or a name goes (C{WHERE id = VALUE}), inside a
single-quoted string (C{WHERE name = 'VALUE'}) or inside a double-quoted one.
L{detect} reads the text in each of these three I{contexts}: as it is, and
from just after the first unescaped C{'} and C{"} (the quote that would close
the application's string), with that string as the first operand.

Each reading is parsed by a small grammar of SQL fragments (L{_parse}, a
state machine over the tokens of L{veil.waf.sqltokens}): an expression that
may close parentheses it did not open, continue with clauses (C{UNION
SELECT}, C{ORDER BY}, C{LIMIT}, C{INTO OUTFILE}, ...), stack further
statements after C{;} (or after an operand, as T-SQL allows) and end in a
comment or an open string.  Natural language stops being such a fragment
within a few tokens ("select the best union of colors" at C{union of},
"O'Reilly" at the name after the string, "Take a left (1 mile)" at
C{left}).  Where a text stops being SQL, what it showed before still
counts, without the rules that need an ending: C{1 union select 1,2 from
x where y} followed by junk is still a UNION.

The features of the fragment are then judged (L{_judge}): a set operation,
a stacked or standalone statement that changes or probes the server, a
time, file or error-based function, a sub-query, a SELECT of constants or
system variables, a boolean that tests constants or calls, a clause after
a literal, arithmetic over string functions, or a break-out of the quotes
that ends in a comment or re-opens the application's quote.  Plain
expressions ("1-2", "black and white", "1950 or 1960") and ordinary queries
pasted as code (C{SELECT * FROM t WHERE ...}, C{INSERT INTO t VALUES
(?)}) parse but are let through.  Paranoia 2 and above (the engine's
levels 3 and 4 behave as 2) also flag the weaker shapes: a boolean or a
clause after a plain word, a bare SELECT ... FROM, a literal and a comment,
any quote break-out with an operator.

L{PREFILTER} is a regular expression that every text L{detect} flags
matches; the engine scans values with it (compiled with hyperscan) and calls
L{detect} only on those that hit.

Bounds: L{detect} looks for the quotes that start the quoted contexts in the
first L{MAX_SCAN} characters of a value (1 MiB, the largest body the engine
inspects; C{str.find} does it at memory speed), and reads at most
L{MAX_CHARS} characters (64 KiB) and L{MAX_TOKENS} tokens from the start of
each context, so that one call costs at most a few milliseconds whatever
the input.
"""

from __future__ import annotations

from veil.waf.sqltokens import closing_quote, tokens
from veil.waf.wordsets import words

__all__ = ["MAX_CHARS", "MAX_SCAN", "MAX_TOKENS", "PREFILTER", "detect", "rules_out"]

#: Characters of a value searched for the quote that starts a quoted context.
MAX_SCAN = 1024 * 1024
#: Characters read from the start of each context.
MAX_CHARS = 64 * 1024
#: Tokens parsed per context; a fragment still valid after that many is
#: judged on what was read.
MAX_TOKENS = 2048

#: Every text that L{detect} flags matches this (hyperscan's dialect: no
#: backreferences, no lookaround; ASCII classes only, so that hyperscan and
#: Python's C{re} agree).  Each rule of L{_judge} needs at least one of: a
#: quote (quoted contexts, string literals), a comment, C{;} (stacked
#: statements), a parenthesis (calls, groups, break-outs), a comparison
#: symbol, C{@@}, a keyword listed (set operations, queries, clauses,
#: statements that may follow an operand without C{;}), C{ORDER BY},
#: C{IS [NOT] NULL}.  AND/OR are not listed: a boolean is flagged only
#: with a comparison, a call, a quote or a comment.  The tokenizer reads
#: keywords only in ASCII, as whole words or glued to digits (C{1UNION}).
PREFILTER = (
    r"(?i)['\"#;()=<>]|--|/\*|@@|"
    r"(?:\b|[0-9])(?:union|select|like|rlike|regexp|glob|ilike|match|between|case|having|"
    r"limit|offset|procedure|lock|into|waitfor|exec|execute|declare|drop|create|alter|"
    r"truncate|insert|replace|delete|update|load|rename)\b|"
    r"(?:order|group|partition)[^a-z0-9_$]+by\b|"
    r"\bis[^a-z0-9_$]+(?:not[^a-z0-9_$]+)?(?:null|true|false|unknown)\b"
)

# Features of a fragment (bit flags).
F_UNION = 1 << 0           # UNION / INTERSECT / EXCEPT followed by SELECT
F_SUBSELECT = 1 << 1       # SELECT inside parentheses or after an operator
F_SELECT = 1 << 2          # a SELECT statement at the top level
F_FROM = 1 << 3            # a FROM clause
F_STACKED = 1 << 4         # a statement after ';' (or after an operand, T-SQL)
F_LOGIC = 1 << 5           # AND OR XOR && ||
F_CMP = 1 << 6             # a comparison
F_CMP_LIT = 1 << 7         # a comparison with a literal on one side
F_TAUTOLOGY = 1 << 8       # a comparison of two literals, or of a name with itself
F_ARITH = 1 << 9           # an arithmetic or bitwise operator
F_FUNC = 1 << 10           # a function call
F_DANGER = 1 << 11         # a time, file, error-based or command function
F_CLAUSE = 1 << 12         # ORDER BY, GROUP BY, HAVING, LIMIT, PROCEDURE, ...
F_INTO_FILE = 1 << 13      # INTO OUTFILE / DUMPFILE
F_COMMENT = 1 << 14        # ends in a '--' or '/*' comment
F_HASH = 1 << 15           # ends in a '#' comment
F_SHORT_COMMENT = 1 << 16  # ... whose text is at most two characters
F_CLOSE = 1 << 17          # closes a parenthesis it did not open
F_OPEN_END = 1 << 18       # ends in an open string (the application closes it)
F_SYSVAR = 1 << 19         # @@name
F_VAR = 1 << 20            # @name
F_CASE = 1 << 21           # CASE ... END
F_DANGLING = 1 << 22       # ends where an operand or a word is required
F_STAR = 1 << 23           # SELECT *
F_CATALOG = 1 << 24        # information_schema, sysobjects, ...
F_GROUP = 1 << 25          # a parenthesised expression
F_CONDITION = 1 << 26      # a constant comparison inside IF()/IIF()/CASE
F_INFO = 1 << 27           # version(), database(), user(), ...
F_STRONG_STMT = 1 << 28    # a statement that changes or probes the server
F_MEDIUM_STMT = 1 << 29    # a statement that is harmless alone (USE, SET, PRINT)
F_LIST = 1 << 30           # a comma outside parentheses
F_EXEC = 1 << 31           # EXEC of a system procedure, a string or a variable
F_TAIL_BODY = 1 << 32      # a statement has more than its first words
F_ERROR = 1 << 33          # the text stops being SQL after a while
F_LITERAL = 1 << 34        # a number or string literal (after the breakout)
F_BY = 1 << 35             # ORDER BY / GROUP BY read, its first item not yet
F_BY_NAME = 1 << 36        # ORDER BY / GROUP BY a name
F_SETOP = 1 << 37          # UNION / INTERSECT / EXCEPT
F_UNION_SELECT = 1 << 38   # UNION ... SELECT (its first item may be missing)
F_NAME = 1 << 39           # a plain name as an operand
F_VERSIONED = 1 << 40      # a MySQL versioned comment /*! ... */
F_DECLARE = 1 << 41        # DECLARE @var: T-SQL and nothing else
F_INFO_CALL = 1 << 42      # version(), user(), database() ... called with no argument
F_NESTED = 1 << 43         # a function call inside another
F_PROBE = 1 << 44          # a constant, call or variable among a SELECT's columns
F_ADMIN_STMT = 1 << 45     # DROP, CREATE, ALTER, TRUNCATE, RENAME, LOAD, GRANT ...
F_EXTRACT = 1 << 46        # ascii(), substring(), char(), hex() ...

_DANGER_FUNCTIONS = words("""
    sleep benchmark pg_sleep load_file extractvalue updatexml xp_cmdshell
    sys_eval sys_exec pg_read_file lo_import randomblob name_const gtid_subset
    geometrycollection multipoint multipolygon multilinestring linestring polygon
    dbms_pipe dbms_lock utl_http utl_inaddr xmltype make_set receive_message
    get_host_name request
""")
_INFO_FUNCTIONS = words("""
    version database user current_user system_user session_user schema db_name
    user_name last_insert_id connection_id
""")
_COND_FUNCTIONS = words("if iif ifnull nullif elt")
# Functions that take strings apart or build them from codes.
_EXTRACT_FUNCTIONS = words("""
    ascii ord substring substr mid char chr hex unhex bin conv concat concat_ws group_concat
    length char_length left right
""")
# Functions of ordinary queries, not of probes (SELECT COUNT(*) FROM logs).
_AGGREGATES = words("count sum avg min max")
_CATALOGS = (
    "information_schema", "sysobjects", "syscolumns", "sysusers", "sys.", "mysql.",
    "pg_catalog", "pg_shadow", "pg_user", "all_tables", "all_tab_columns",
    "user_tables", "sqlite_master", "msysobjects", "master.",
)
_COMPARE = frozenset(["=", "<>", "!=", "<", ">", "<=", ">=", "<=>", "!<", "!>"])
_COMPARE_WORDS = frozenset(["LIKE", "RLIKE", "REGEXP", "GLOB", "ILIKE", "MATCH"])
_UNARY_OPS = frozenset(["-", "+", "~", "!"])
_LITERAL_WORDS = words("""
    NULL TRUE FALSE UNKNOWN DEFAULT CURRENT_USER CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP
    LOCALTIME LOCALTIMESTAMP SESSION_USER SYSTEM_USER UTC_DATE UTC_TIME UTC_TIMESTAMP SYSDATE
    ROWNUM
""")
_LITERAL_KINDS = frozenset("1sSl")
# Features that decide the verdict whatever follows them.
_DECISIVE = F_UNION | F_DANGER | F_INTO_FILE
# What makes a sub-query an attack (see _judge), whatever follows.
_SUBQUERY_EVIDENCE = (F_FROM | F_FUNC | F_SYSVAR | F_VAR | F_STAR | F_CATALOG | F_LITERAL
                      | F_CMP)

# Parser states.
_OPERAND = 0   # an operand is expected
_AFTER = 1     # an operand is complete
_NEED = 2      # a word from the table `need` is required
_TAIL = 3      # the rest of a statement, read leniently up to ';'
_DOT = 4       # after '.' or '::': a name is required
_ALIAS = 5     # after AS: a name is required
_SETOP = 6     # after UNION: ALL, DISTINCT, '(' or SELECT
_IS = 7        # after IS [NOT]

# Multi-word constructs.  A table maps the next token -- a word in upper
# case, or a token kind: n (any name), s (string), v (variable), 1
# (number), f (function call), ( -- to either another table or a leaf
# (state, clause, flags, statement strength).  Strength 2: the statement
# harms alone; 1: only when stacked after another; 0: never.
_OP = (_OPERAND, None, 0, 0)
_NAMED = {"n": (_TAIL, None, F_ADMIN_STMT, 2), "v": (_TAIL, None, F_ADMIN_STMT, 2),
          "IF": (_TAIL, None, F_ADMIN_STMT, 2), "TABLE": (_TAIL, None, F_ADMIN_STMT, 2),
          "f": (_TAIL, None, F_ADMIN_STMT, 2)}
_OBJECT = dict.fromkeys(words(
    "TABLE DATABASE SCHEMA VIEW PROCEDURE FUNCTION USER INDEX TRIGGER EVENT LOGIN "
    "TEMPORARY TABLESPACE ROLE SEQUENCE"), _NAMED)
# EXEC name: strong when the name is a system procedure (see _parse).
_EXEC_NAME = (_TAIL, None, 0, 0)
_SYSTEM_PROCEDURES = ("xp_", "sp_", "master", "dbo.", "sys.", "immediate")
# EXEC 'string': strong unless the string starts with a space, as the rest
# of a sentence does after a quoted word ("is 'exec' short for ..."); a
# procedure name or SQL to run starts at the quote.
_EXEC_STRING = (_TAIL, None, F_EXEC, 2)
_EXEC_PROSE = (_TAIL, None, F_EXEC, 1)
_DELETE: dict = {"FROM": {"n": (_TAIL, None, 0, 2)}}
_DELETE.update(LOW_PRIORITY=_DELETE, QUICK=_DELETE, IGNORE=_DELETE)
_STATEMENTS: dict[str, dict | tuple] = {
    "WAITFOR": {"DELAY": {"s": (_TAIL, None, F_DANGER, 2)},
                "TIME": {"s": (_TAIL, None, F_DANGER, 2)}},
    "DROP": _OBJECT,
    "CREATE": _OBJECT,
    "ALTER": _OBJECT,
    "TRUNCATE": {"TABLE": (_TAIL, None, F_ADMIN_STMT, 2), "n": (_TAIL, None, F_ADMIN_STMT, 2)},
    "DECLARE": {"v": (_TAIL, None, F_DECLARE, 2), "n": {"CURSOR": (_TAIL, None, F_DECLARE, 2)}},
    "SHUTDOWN": (_TAIL, None, 0, 1),
    "INSERT": {"INTO": {"n": (_TAIL, None, 0, 2), "f": (_TAIL, None, 0, 2)}},
    "REPLACE": {"INTO": {"n": (_TAIL, None, 0, 2), "f": (_TAIL, None, 0, 2)},
                "n": (_TAIL, None, 0, 2), "f": (_TAIL, None, 0, 2)},
    "DELETE": _DELETE,
    "UPDATE": {"n": {"SET": (_TAIL, None, 0, 2)}},
    "EXEC": {"n": _EXEC_NAME, "(": (_TAIL, None, F_EXEC, 2), "s": _EXEC_STRING,
             "v": (_TAIL, None, F_EXEC, 2), "AS": (_TAIL, None, F_EXEC, 2),
             "f": (_TAIL, None, F_EXEC, 2)},
    "SET": {"v": (_TAIL, None, 0, 2), "n": {"=": (_TAIL, None, 0, 1)}},
    "USE": {"n": (_TAIL, None, 0, 1)},
    "GRANT": (_TAIL, None, 0, 1),
    "REVOKE": (_TAIL, None, 0, 1),
    "PRINT": (_OPERAND, None, 0, 1),
    "CALL": {"f": (_OPERAND, None, 0, 1)},
    "LOAD": {"DATA": (_TAIL, None, F_ADMIN_STMT, 2), "XML": (_TAIL, None, F_ADMIN_STMT, 2)},
    "RENAME": {"TABLE": (_TAIL, None, F_ADMIN_STMT, 2), "USER": (_TAIL, None, F_ADMIN_STMT, 2)},
    "KILL": {"1": (_TAIL, None, 0, 1)},
    "HANDLER": {"n": (_TAIL, None, 0, 1)},
    "GOTO": {"n": (_TAIL, None, 0, 1)},
    "DO": (_OPERAND, None, 0, 1),
}
_STATEMENTS["EXECUTE"] = _STATEMENTS["EXEC"]

_BY_LIST = {"BY": (_OPERAND, "order", F_BY, 0)}
_LIMIT = {"1": (_AFTER, "limit", F_CLAUSE, 0), "v": (_AFTER, "limit", F_CLAUSE, 0)}
_JOIN = {"JOIN": (_OPERAND, "from", 0, 0)}
_JOIN_OUTER = {"JOIN": (_OPERAND, "from", 0, 0), "OUTER": _JOIN}
_CLAUSES: dict[str, dict | tuple] = {
    "ORDER": _BY_LIST,
    "GROUP": _BY_LIST,
    "HAVING": (_OPERAND, "expr", F_CLAUSE, 0),
    "WHERE": (_OPERAND, "expr", 0, 0),
    "LIMIT": _LIMIT,
    "OFFSET": _LIMIT,
    "FROM": (_OPERAND, "from", F_FROM, 0),
    "INTO": {"OUTFILE": (_OPERAND, None, F_INTO_FILE, 0),
             "DUMPFILE": (_OPERAND, None, F_INTO_FILE, 0),
             "v": (_AFTER, None, 0, 0), "n": (_AFTER, None, 0, 0)},
    "PROCEDURE": {"f": (_OPERAND, None, F_CLAUSE, 0)},
    "FOR": {"UPDATE": (_AFTER, None, F_CLAUSE, 0)},
    "LOCK": {"IN": {"SHARE": {"MODE": (_AFTER, None, F_CLAUSE, 0)}}},
    "WITH": {"ROLLUP": (_AFTER, None, 0, 0)},
    "JOIN": (_OPERAND, "from", 0, 0),
    "INNER": _JOIN,
    "CROSS": _JOIN,
    "STRAIGHT_JOIN": (_OPERAND, "from", 0, 0),
    "LEFT": _JOIN_OUTER,
    "RIGHT": _JOIN_OUTER,
    "NATURAL": {"JOIN": (_OPERAND, "from", 0, 0), "LEFT": _JOIN_OUTER, "RIGHT": _JOIN_OUTER},
    "ON": (_OPERAND, "on", 0, 0),
    "USING": {"(": (_OPERAND, "expr", 0, 0)},
    "OVER": {"(": (_OPERAND, "window", 0, 0)},
    "WITHIN": {"GROUP": {"(": (_OPERAND, "window", 0, 0)}},
}
_JOIN_WORDS = words("JOIN INNER CROSS STRAIGHT_JOIN LEFT RIGHT NATURAL ON USING")
_SELECT_CLAUSES = words("FROM WHERE GROUP ORDER HAVING LIMIT OFFSET INTO PROCEDURE FOR LOCK WITH")
_NOT_OPS = {w: (_OPERAND, None, 0, 0) for w in
            ("LIKE", "RLIKE", "REGEXP", "BETWEEN", "ILIKE", "GLOB")}
_NOT_OPS["IN"] = {"(": (_OPERAND, "expr", 0, 0)}
_IN = {"(": (_OPERAND, "expr", 0, 0),
       # MATCH (...) AGAINST ('x' IN BOOLEAN MODE): ends a parenthesis.
       "BOOLEAN": {"MODE": (_AFTER, None, 0, 0)},
       "NATURAL": {"LANGUAGE": {"MODE": (_AFTER, None, 0, 0)}}}
_TOP = {"1": (_OPERAND, "select", 0, 0), "(": (_OPERAND, "expr", 0, 0)}


def detect(text: str, paranoia: int = 1) -> str | None:
    """
    Whether C{text} is a SQL injection: a short reason -- the rule that
    fired and the context, C{"union@squote"}, C{"tautology@as-is"} -- if it
    is, else C{None}.  Never raises.

    C{paranoia} 1 (the default) flags only fragments that do something
    ordinary text does not; 2 and above also flag weaker shapes (see the
    module docstring).
    """
    if rules_out(text):
        return None
    reason = _judge(_parse(tokens(text, 0, MAX_CHARS), ""), "", paranoia)
    if reason:
        return reason + "@as-is"
    for quote, name in (("'", "@squote"), ('"', "@dquote")):
        start = closing_quote(text, quote, MAX_SCAN)
        if start > 0:
            reason = _judge(_parse(tokens(text, start, start + MAX_CHARS), quote), quote,
                            paranoia)
            if reason:
                return reason + name
    return None


def rules_out(text: str) -> bool:
    """
    Whether C{text} is one L{detect} never flags, told cheaply: a path or a
    request target (a slash first, not a comment's) without quotes.  Its
    first token, an operator that no expression starts with, ends the
    reading as it is (a fragment with nothing in it), and no quote starts
    another reading.
    """
    return text[:1] == "/" and text[1:2] != "*" and "'" not in text and '"' not in text


def _parse(toks, quote: str) -> tuple[int, str] | None:
    """
    Parse one reading of a value: C{(flags, lead)} if it is a SQL fragment,
    where C{lead} is the kind of its first token, else C{None}.  A reading
    with a C{quote} starts after the closing quote of the application's
    string, which is its first operand.
    """
    quoted = bool(quote)
    flags = 0
    stack: list[list] = []      # open parentheses: [kind, saved clause, saved has_select, cond]
    clause = "expr"             # expr, select, from, on, order, limit, window
    has_select = True           # clauses are allowed (the application's own SELECT)
    aliased = False
    need: dict = {}
    stmt_start = not quoted     # a statement may start here
    strength = 0
    prev_kind = "s" if quoted else ""
    prev_text = ""
    prev2_kind = ""
    cmp_left = None             # (kind, text) on the left of the last comparison
    cmp_save = None
    conds = 0                   # open IF()/IIF()/CASE
    tail_depth = 0
    last_name = ""
    last_comment = ""
    count = 0
    lead = "s" if quoted else ""
    state = _AFTER if quoted else _OPERAND
    error = False
    union = False               # UNION ... SELECT read, its first item not yet
    tsql = False                # a statement followed an operand without ';' 

    for tok in toks:
        kind, text = tok
        if kind == "c":
            last_comment = text
            continue
        if kind == "!":
            flags |= F_VERSIONED
            continue
        last_comment = ""
        count += 1
        if count > MAX_TOKENS or flags & _DECISIVE or (strength == 2 and flags & F_STACKED) \
                or (flags & F_SUBSELECT and flags & _SUBQUERY_EVIDENCE):
            # Past the limit, or nothing that follows can change the verdict.
            break
        if not lead:
            if kind == "k":
                lead = "l" if text in _LITERAL_WORDS else ("o" if text in ("NOT", "BINARY") else "k")
            else:
                lead = kind

        if cmp_left is not None:
            # The right side of a comparison.
            if kind in _LITERAL_KINDS or kind == "v" or (kind == "k" and text in _LITERAL_WORDS):
                flags |= F_CMP_LIT
                lk = cmp_left[0]
                if lk in _LITERAL_KINDS or (lk == "k" and cmp_left[1] in _LITERAL_WORDS):
                    flags |= F_TAUTOLOGY
                    if conds:
                        flags |= F_CONDITION
            elif kind == "n" and cmp_left[0] == "n" and text.lower() == cmp_left[1].lower():
                flags |= F_TAUTOLOGY
            elif cmp_left[0] in _LITERAL_KINDS or (cmp_left[0] == "k" and cmp_left[1] in _LITERAL_WORDS):
                flags |= F_CMP_LIT
            if kind != "(" and (kind != "o" or text not in "-+~"):
                cmp_left = None   # (after a sign or a '(', the operand follows)

        if state == _OPERAND:
            if union and (kind != "k" or text in _LITERAL_WORDS):
                # The first item of the SELECT after UNION.
                union = False
                column = kind in "1sSvf(k" or (kind == "o" and text in "*-+~!")
                if column or (kind == "n" and lead != "k"):
                    flags |= F_UNION
            if flags & F_BY:
                # ORDER BY 1 probes the number of columns; ORDER BY name sorts.
                flags &= ~F_BY
                flags |= F_BY_NAME if kind == "n" else F_CLAUSE
            if prev_kind == ";" and kind != "k" and kind != "(" and kind != "f":
                error = True
                break
            if kind == "1" or kind == "s" or kind == "n" or kind == "v" or kind == "S":
                state = _AFTER
                aliased = False
                flags |= F_NAME if kind == "n" else F_LITERAL
                if clause == "select" and kind != "n":
                    flags |= F_PROBE
                if kind == "v":
                    flags |= F_SYSVAR if text.startswith("@@") else F_VAR
                elif kind == "n":
                    last_name = text.lower().strip("`")
                    if last_name.startswith(_CATALOGS):
                        flags |= F_CATALOG
                elif kind == "S" and (not quote or quote in text[:3]):
                    # Open to the end: the application's closing quote ends
                    # it when it is the same quote.
                    flags |= F_OPEN_END
            elif kind == "f":
                f = _function_flags(text)
                if stack and stack[-1][0] == "func":
                    flags |= F_NESTED
                if clause == "select" and text not in _AGGREGATES:
                    flags |= F_PROBE
                cond = text in _COND_FUNCTIONS
                conds += cond
                flags |= f & ~F_DANGER
                stack.append(["func", clause, has_select, cond, f & F_DANGER])
                clause = "expr"
                has_select = False
            elif kind == "(":
                stack.append(["group", clause, has_select, False, 0])
                clause = "expr"
                has_select = False
                flags |= F_GROUP
            elif kind == "o":
                if text == "*" and (clause == "select" or (stack and stack[-1][0] == "func")):
                    state = _AFTER
                    flags |= F_STAR
                elif text not in _UNARY_OPS:
                    error = True
                    break
            elif kind == ")":
                # f() and OVER (): an empty list.
                if prev_kind in "f(" and stack and stack[-1][0] != "group":
                    if prev_kind == "f" and prev_text in _INFO_FUNCTIONS:
                        flags |= F_INFO_CALL
                    frame = stack.pop()
                    clause, has_select = frame[1], frame[2]
                    conds -= frame[3]
                    flags |= frame[4]
                    state = _AFTER
                elif count == 1:
                    # ") UNION ...": closes the application's parenthesis.
                    flags |= F_CLOSE
                    state = _AFTER
                else:
                    error = True
                    break
            elif kind == ";":
                if count == 1 and not quoted:
                    stmt_start = True
                    prev2_kind, prev_kind, prev_text = prev_kind, kind, text
                    continue
                error = True
                break
            elif kind == "k":
                if text == "UNION" and count == 1:
                    state = _SETOP
                    flags |= F_SETOP
                elif text in ("AND", "OR") and count == 1 and not quoted:
                    # The value continues a condition: "AND 1=1".
                    flags |= F_LOGIC
                    lead = "&"
                elif text == "SELECT":
                    if stack or prev_kind not in ("", ";"):
                        flags |= F_SUBSELECT
                    else:
                        flags |= F_SELECT
                        if prev_kind == ";":
                            flags |= F_STACKED
                    has_select = True
                    clause = "select"
                elif text in _LITERAL_WORDS:
                    state = _AFTER
                    aliased = False
                    flags |= F_LITERAL
                    if clause == "select":
                        flags |= F_PROBE
                elif text in ("NOT", "BINARY", "PRIOR", "INTERVAL"):
                    pass
                elif text == "TOP":
                    if clause != "select":
                        error = True
                        break
                    need = _TOP
                    state = _NEED
                elif text in ("DISTINCT", "ALL"):
                    if clause != "select" and not (stack and stack[-1][0] == "func"):
                        error = True
                        break
                elif text in ("EXISTS", "ANY", "SOME"):
                    need = _IN
                    state = _NEED
                elif text == "CASE":
                    stack.append(["case", clause, has_select, True, 0])
                    conds += 1
                elif text == "WHEN" and prev_text == "CASE":
                    pass
                elif clause == "window" and text in ("ORDER", "PARTITION"):
                    need = _BY_LIST
                    state = _NEED
                elif stmt_start and (text in _STATEMENTS or text in ("IF", "BEGIN")):
                    if count > 1:
                        flags |= F_STACKED
                    if text in ("IF", "BEGIN"):
                        prev2_kind, prev_kind, prev_text = prev_kind, kind, text
                        continue
                    entry = _STATEMENTS[text]
                    if type(entry) is dict:
                        need = entry
                        state = _NEED
                    else:
                        state = entry[0]
                        strength = max(strength, entry[3])
                else:
                    error = True
                    break
            else:
                error = True
                break
            stmt_start = False

        elif state == _AFTER:
            if kind == "o":
                if text in _COMPARE:
                    flags |= F_CMP
                    cmp_left = (prev_kind, prev_text) if prev2_kind != "=" else None
                    kind = "="
                elif text == "::":
                    state = _DOT
                    prev2_kind, prev_kind, prev_text = prev_kind, kind, text
                    continue
                elif text == "!" or text == "~":
                    error = True
                    break
                else:
                    flags |= F_ARITH
                state = _OPERAND
            elif kind == "&":
                flags |= F_LOGIC
                state = _OPERAND
            elif kind == ")":
                if stack:
                    frame = stack.pop()
                    if frame[0] == "case":
                        error = True
                        break
                    clause, has_select = frame[1], frame[2]
                    conds -= frame[3]
                    flags |= frame[4]
                    if frame[0] == "group" and prev2_kind == "(" and prev_kind in _LITERAL_KINDS:
                        # (8) = 3: a literal in parentheses is a literal.
                        kind, text = prev_kind, prev_text
                else:
                    flags |= F_CLOSE
                    clause = "expr"
                    has_select = True
                aliased = False
            elif kind == ",":
                if not stack and clause == "expr":
                    flags |= F_LIST
                state = _OPERAND
            elif kind == ".":
                state = _DOT
            elif kind == ";":
                if stack:
                    error = True
                    break
                state = _OPERAND
                stmt_start = True
                clause = "expr"
                has_select = True
            elif kind == "n" or kind == "s":
                # An alias, where one is allowed.
                if (clause == "select" or clause == "from") and not aliased:
                    aliased = True
                elif kind == "n" and stack and stack[-1][0] == "func" and text.upper() == "SEPARATOR":
                    state = _OPERAND
                else:
                    error = True
                    break
            elif kind == "k":
                w = text
                if w == "AND" or w == "OR" or w == "XOR":
                    flags |= F_LOGIC
                    state = _OPERAND
                    kind = "&"
                elif w in _COMPARE_WORDS or w == "BETWEEN":
                    flags |= F_CMP
                    cmp_left = (prev_kind, prev_text)
                    state = _OPERAND
                    kind = "="
                elif w == "NOT" or w == "SOUNDS":
                    flags |= F_CMP
                    cmp_save = (prev_kind, prev_text)
                    need = _NOT_OPS if w == "NOT" else {"LIKE": _OP}
                    state = _NEED
                elif w == "IN":
                    flags |= F_CMP
                    need = _IN
                    state = _NEED
                elif w == "IS":
                    flags |= F_CMP
                    state = _IS
                elif w in ("DIV", "MOD", "COLLATE", "ESCAPE", "EQV", "IMP"):
                    flags |= F_ARITH
                    state = _OPERAND
                elif w in ("UNION", "INTERSECT", "EXCEPT", "MINUS"):
                    state = _SETOP
                    flags |= F_SETOP
                elif w == "AS":
                    state = _ALIAS
                elif w == "ASC" or w == "DESC":
                    if clause != "order":
                        error = True
                        break
                elif stack and stack[-1][0] == "case" and w in ("WHEN", "THEN", "ELSE"):
                    state = _OPERAND
                elif stack and stack[-1][0] == "case" and w == "END":
                    stack.pop()
                    conds -= 1
                    flags |= F_CASE
                elif stack and stack[-1][0] == "func" and w in ("FROM", "FOR", "ORDER", "USING", "IN"):
                    # EXTRACT(YEAR FROM d), SUBSTRING(s FROM 1 FOR 2), GROUP_CONCAT(x ORDER BY y)
                    if w == "ORDER":
                        need = _BY_LIST
                        state = _NEED
                    else:
                        state = _OPERAND
                elif w in _CLAUSES and (
                        (w in _SELECT_CLAUSES and has_select)
                        or (w in _JOIN_WORDS and clause in ("from", "on"))
                        or w in ("OVER", "WITHIN")):
                    entry = _CLAUSES[w]
                    if type(entry) is dict:
                        need = entry
                        state = _NEED
                    else:
                        state, c, f, _ = entry
                        clause = c or clause
                        flags |= f
                elif not stack and (w in _STATEMENTS or w in ("IF", "BEGIN", "SELECT")) \
                        and (w == "WAITFOR" or (prev_kind != "n" and (
                            w != "SELECT" or prev_kind not in "sS"))):
                    # T-SQL runs statements one after another without ';'
                    # (not after a plain word: "please select 2" is English;
                    # and no SELECT after a string: {'select': 1}).
                    flags |= F_STACKED
                    if w == "SELECT":
                        flags |= F_SELECT
                        clause = "select"
                        has_select = True
                        state = _OPERAND
                    elif w == "IF" or w == "BEGIN":
                        state = _OPERAND
                        stmt_start = True
                        prev2_kind, prev_kind, prev_text = prev_kind, kind, text
                        continue
                    else:
                        entry = _STATEMENTS[w]
                        if type(entry) is dict:
                            need = entry
                            state = _NEED
                        else:
                            state = entry[0]
                            strength = max(strength, entry[3])
                        tsql = True
                elif w == "END" and not stack:
                    pass
                else:
                    error = True
                    break
            elif kind == "f" and text in ("like", "glob", "regexp"):
                # x LIKE('a%'): the operator, glued to a parenthesis.
                flags |= F_CMP
                cmp_left = (prev_kind, prev_text)
                stack.append(["group", clause, has_select, False, 0])
                clause = "expr"
                has_select = False
                state = _OPERAND
                kind = "="
            else:
                error = True
                break

        elif state == _NEED:
            if kind == "k" or kind == "n":
                key = text.upper()
                entry = need.get(key)
                if entry is None:
                    entry = need.get(kind)
            elif kind == "o":
                entry = need.get(text)
            else:
                entry = need.get(kind)
                if entry is None and kind == "S":
                    entry = need.get("s")
            if entry is None:
                error = True
                break
            if kind == "(":
                stack.append(["group", clause, has_select, False, 0])
                has_select = False
                clause = "expr"
            elif kind == "f":
                f = _function_flags(text)
                flags |= f & ~F_DANGER
                stack.append(["func", clause, has_select, False, f & F_DANGER])
                has_select = False
                clause = "expr"
            if type(entry) is dict:
                need = entry
            else:
                if entry is _EXEC_NAME and text.lower().startswith(_SYSTEM_PROCEDURES):
                    entry = (_TAIL, None, F_EXEC, 2)
                elif entry is _EXEC_STRING and text.lstrip("Nn")[1:2].isspace():
                    entry = _EXEC_PROSE
                state, c, f, s = entry
                if c:
                    clause = c
                flags |= f
                strength = max(strength, s)
                if cmp_save is not None and state == _OPERAND and kind == "k" and \
                        text in ("LIKE", "RLIKE", "REGEXP", "BETWEEN", "ILIKE", "GLOB"):
                    cmp_left = cmp_save
                cmp_save = None
                if state == _TAIL:
                    tail_depth = 1 if kind in "(f" else 0
                    if tail_depth:
                        stack.pop()
                if state == _AFTER:
                    aliased = False

        elif state == _SETOP:
            if kind == "k" and text in ("ALL", "DISTINCT"):
                pass
            elif kind == "(":
                stack.append(["group", clause, has_select, False, 0])
                has_select = False
            elif kind == "k" and text == "SELECT":
                union = True
                flags |= F_UNION_SELECT
                has_select = True
                clause = "select"
                state = _OPERAND
            else:
                error = True
                break

        elif state == _DOT:
            if kind == "n" or kind == "k" or (kind == "o" and text == "*"):
                state = _AFTER
                last_name = last_name + "." + text.lower().strip("`")
                if last_name.startswith(_CATALOGS):
                    flags |= F_CATALOG
            elif kind == "f":
                f = _function_flags(text) | _function_flags(last_name)
                flags |= f & ~F_DANGER
                stack.append(["func", clause, has_select, False, f & F_DANGER])
                clause = "expr"
                has_select = False
                state = _OPERAND
            elif kind == "." and prev_kind == ".":
                pass  # master..xp_cmdshell
            else:
                error = True
                break

        elif state == _ALIAS:
            if kind == "n" or kind == "s" or kind == "k":
                state = _AFTER
                aliased = True
            elif kind == "f":
                # CAST(x AS VARCHAR(10))
                stack.append(["func", clause, has_select, False, 0])
                clause = "expr"
                has_select = False
                state = _OPERAND
            else:
                error = True
                break

        elif state == _IS:
            if kind == "k" and text == "NOT":
                pass
            elif kind == "k" and text in ("NULL", "TRUE", "FALSE", "UNKNOWN"):
                state = _AFTER
                flags |= F_CMP_LIT
            else:
                error = True
                break

        else:  # _TAIL
            flags |= F_TAIL_BODY
            if kind == ";" and not tail_depth:
                state = _OPERAND
                stmt_start = True
                clause = "expr"
            elif kind == "(" or kind == "f":
                tail_depth += 1
                if kind == "f":
                    flags |= _function_flags(text)
            elif kind == ")" and tail_depth:
                tail_depth -= 1

        prev2_kind, prev_kind, prev_text = prev_kind, kind, text

    if not lead:
        return None
    if state != _AFTER and state != _TAIL and prev_kind != ";":
        flags |= F_DANGLING
    if strength == 2:
        flags |= F_STRONG_STMT
    elif strength == 1 and not tsql and not error:
        # USE, SET, PRINT ... count only after ';' and when complete.
        flags |= F_MEDIUM_STMT
    if error:
        # The text stops being SQL here: what was read before still counts,
        # as a fragment without an ending (no comment, no open string).
        return flags | F_ERROR, lead
    for frame in stack:
        # A call left open at the end: the application may close it.
        flags |= frame[4]
    if last_comment:
        if last_comment[0] == "#":
            flags |= F_HASH
            body = last_comment[1:]
        else:
            flags |= F_COMMENT
            body = last_comment[2:]
        if len(body.strip()) <= 2:
            flags |= F_SHORT_COMMENT
    return flags, lead


def _function_flags(name: str) -> int:
    """The flags a call of the function C{name} (lower case) adds."""
    base = name.split(".")[-1]
    if base in _DANGER_FUNCTIONS or name.split(".")[0] in _DANGER_FUNCTIONS:
        return F_FUNC | F_DANGER
    if base in _INFO_FUNCTIONS:
        return F_FUNC | F_INFO
    if base in _EXTRACT_FUNCTIONS:
        return F_FUNC | F_EXTRACT
    return F_FUNC


# Leads (first token kinds) that a value placed where a number goes starts
# with when it is an injection: not a plain word.
_STRONG_LEADS = frozenset("1sSvf(ol&")
_TRUNCATED = F_COMMENT | F_HASH


def _judge(parsed: tuple[int, str] | None, quote: str, paranoia: int) -> str | None:
    """
    The rule a parsed fragment breaks, or C{None}.

    A fragment cut short by an error (C{F_ERROR}) is judged on what it
    showed before, without the rules that need its ending (those flags are
    not set then).  C{quote} is the reading's context: the double-quote
    context, where natural text that quotes a word looks like a break-out,
    needs more than the single-quote one.  A I{strong lead} is a first
    token that a value placed where a number goes starts with when it is an
    injection: a number, a string, a variable, a parenthesis, an operator,
    a function call, AND/OR -- not a plain word.
    """
    if parsed is None:
        return None
    flags, lead = parsed
    dangling = flags & F_DANGLING
    strong_lead = quote or lead in _STRONG_LEADS
    truncated = flags & _TRUNCATED

    # Set operations, stacked statements, files, time and command functions.
    if flags & F_UNION:
        return "union"
    if flags & F_UNION_SELECT and (strong_lead or flags & (F_LITERAL | F_FUNC | F_STAR | F_CATALOG
                                                           | F_CLAUSE)):
        return "union"
    if flags & F_SETOP and strong_lead and (dangling or truncated) and not flags & F_ERROR:
        return "union"
    if flags & F_STACKED:
        if flags & F_STRONG_STMT or (flags & F_MEDIUM_STMT and not dangling):
            return "stacked"
        if flags & F_SELECT and (strong_lead or flags & F_LITERAL):
            return "stacked"
    if flags & F_STRONG_STMT and lead == "k" and not dangling and (
            flags & (F_EXEC | F_DECLARE) or flags & F_TAIL_BODY and flags & F_ADMIN_STMT):
        # A whole statement in the value, complete enough to run, that
        # drops, creates or runs things (INSERT, UPDATE, DELETE pasted as
        # code are let through).
        return "statement"
    if flags & F_INTO_FILE:
        return "into-file"
    if flags & F_DANGER:
        return "function"

    # Queries.
    if flags & F_SUBSELECT and flags & _SUBQUERY_EVIDENCE:
        return "subquery"
    # A SELECT of constants, functions or variables probes the server;
    # SELECT * / columns FROM ... WHERE ... is a query pasted as code.
    if flags & F_SELECT and flags & (F_PROBE | F_SYSVAR | F_CATALOG) and (
            not dangling or flags & F_FROM):
        return "select"
    if flags & F_SYSVAR and flags & (F_FUNC | F_CMP | F_LOGIC | F_ARITH) | truncated:
        return "system-variable"
    if flags & F_INFO_CALL and flags & (F_CMP | F_LOGIC | F_ARITH | F_NESTED):
        return "info-function"
    if flags & F_EXTRACT and flags & F_ARITH and lead in "1(" and not dangling:
        # 456 + ASCII(SUBSTRING(passwd,1,1)) - 10: a column read char by char.
        return "extraction"

    # Conditions.
    if flags & F_TAUTOLOGY and flags & (F_LOGIC | F_CLAUSE | F_CLOSE):
        return "tautology"
    if flags & F_CONDITION:
        return "condition"
    if flags & F_LOGIC and (strong_lead or paranoia >= 2):
        if flags & (F_CMP_LIT | F_FUNC | F_SYSVAR | F_CASE) and (quote or not dangling):
            return "boolean"
        if quote == "'" and flags & (F_LITERAL | F_ARITH | F_CMP) and not flags & (F_DANGLING | F_ERROR):
            return "boolean"
        if quote == "'" and flags & (_TRUNCATED | F_OPEN_END):
            return "boolean"
        if flags & (F_GROUP | F_CLOSE) and (
                flags & F_OPEN_END or flags & _TRUNCATED and flags & F_SHORT_COMMENT):
            return "boolean"
    if flags & F_CASE and not dangling:
        return "case"

    # Clauses after a literal or a break-out.
    if flags & F_CLAUSE and not dangling and (strong_lead or paranoia >= 2):
        return "clause"
    if flags & F_BY_NAME and truncated and (quote or flags & F_CLOSE):
        return "clause"
    if flags & F_CLOSE and flags & F_FROM and not dangling:
        return "clause"

    # Break-outs that end in a comment or re-open the application's quote.
    if quote == "'" or (quote and paranoia >= 2):
        ended = flags & F_OPEN_END or (truncated and flags & F_SHORT_COMMENT)
        if flags & (F_CMP | F_ARITH | F_LOGIC) and ended:
            return "quote-break"
        if truncated and (flags & F_SHORT_COMMENT or flags & F_CLOSE):
            return "quote-comment"
    # An expression cut off by an empty comment ("1 * 1/*"); "3 - 2 -- easy"
    # is a remark.
    if strong_lead and flags & F_COMMENT and flags & F_SHORT_COMMENT and (
            flags & (F_CMP | F_GROUP | F_CLOSE | F_FUNC) or flags & F_ARITH and not flags & F_NAME):
        return "comment"
    if lead in "1v" and flags & F_COMMENT and flags & F_SHORT_COMMENT \
            and not flags & (F_NAME | F_LIST | F_ARITH):
        return "comment"
    if flags & F_VERSIONED and flags & (F_SETOP | F_SELECT | F_LOGIC | F_CMP | F_FUNC | F_CLAUSE
                                        | F_STACKED):
        return "versioned-comment"

    if paranoia >= 2:
        if strong_lead and truncated:
            return "comment"
        if flags & F_SELECT and not dangling:
            return "select"
        if flags & F_LOGIC and flags & F_CMP and not dangling:
            return "boolean"
        if flags & F_BY_NAME and not dangling:
            return "clause"
    return None
