#!/usr/bin/env python3
"""
The WAF's efficacy through the real proxy: a Veil from this checkout on
loopback, one site in front of an origin that answers 200 to everything,
and the shared replay scorer sending every corpus the anchor used through
it over TLS, one connection per case (a 403 is a block).

    .venv/bin/python bench/waf/replay.py --scorer ../shared/bench/tools/waf_score.py \\
        --corpora ../shared/corpora --out /tmp/veil-replay --compare

or with VEIL_WAF_SCORER and VEIL_WAF_CORPORA set.  The corpora are read
where they are (nothing is copied): the GoTestWAF test cases, the OWASP CRS
regression tests of v3.3.4 and v4 (each tagged with the paranoia level of
the rule it tests, from the corpus's rule-paranoia-levels.tsv), libinjection's
SQLi, XSS and false-positive lines, and Veil's own benign corpus
(bench/waf/benign/benign.jsonl).  These are the anchor's commands
(../shared/bench/results-waf-anchor-2026-12-04.md) with one change: the
scorer's --host names the site (it replaces every case's Host header and is
the TLS SNI name), since Veil routes by name and the anchor's nginx answered
any.

Veil runs as `twistd veil` with its embedded PostgreSQL in a scratch data
directory (--out/veil), on free loopback ports, with its defaults (paranoia 1,
threshold 5, block mode, 64 KiB of bodies inspected, inspect-prefix beyond)
unless --paranoia, --threshold, --inspect-body-limit or --body-overflow say
otherwise (set on the site with `veil sites set`); it is stopped at the end.  The origin is a small asyncio server in
this process.

Writes, under --out: each corpus's scorer output (`<name>.txt`) and per-case
results (`<name>.json`), the table (`table.md`, also printed), and with
--compare the cases whose replay outcome differs from the engine's verdict
in-process on the same bytes (`differences.md`): what the proxy changes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import glob
import importlib.util
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import httptools

ROOT = Path(__file__).resolve().parents[2]
SITE = "waf.test"


# -- the origin ---------------------------------------------------------------------------



#: The replay's own environment variables (not Veil's configuration keys).
OWN_VARIABLES = ("VEIL_WAF_SCORER", "VEIL_WAF_CORPORA")

class _Origin(asyncio.Protocol):
    """Answers every request with 200 and a two-byte body, keep-alive."""

    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(self.answer)
        if not self.parser.should_keep_alive():
            self.transport.close()


def start_origin() -> int:
    """The origin on a thread of its own; its port."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(_Origin, "127.0.0.1", 0, backlog=1024))
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()

    threading.Thread(target=run, name="origin", daemon=True).start()
    started.wait(10)
    return ready[0]


# -- Veil ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Veil:
    """`twistd veil` from this checkout, with its embedded cluster in a scratch directory."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.data = out / "veil"
        self.edge, self.http, self.dashboard = free_port(), free_port(), free_port()
        # The replay's own settings share Veil's VEIL_ prefix, which Veil
        # refuses as unknown keys: they stay here.
        inherited = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
        self.env = {**inherited, "PYTHONPATH": str(ROOT), "VEIL_DATA_DIR": str(self.data),
                    "VEIL_EDGE_PORT": str(self.edge), "VEIL_HTTP_PORT": str(self.http),
                    "VEIL_DASHBOARD_PORT": str(self.dashboard), **env}
        self.log = out / "veil.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "--nodaemon", "--pidfile=", "veil"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"Veil stopped (status {self.process.returncode}): see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.dashboard}/ready",
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"Veil not ready within {timeout:.0f} s: see {self.log}")

    def cli(self, *argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "veil.cli", *argv], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"veil {' '.join(argv)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def get(self, target: str) -> int:
        """One GET through the edge (TLS, SNI the site's name): its status, or -1."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection(("127.0.0.1", self.edge), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=SITE) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n"
                          f"User-Agent: replay\r\nAccept: */*\r\n\r\n".encode())
                head = s.recv(100)
        except OSError:
            return -1
        match = re.match(rb"HTTP/1\.1 (\d{3})", head)
        return int(match.group(1)) if match else -1

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- the corpora ---------------------------------------------------------------------------


def runs(corpora: Path) -> list[tuple[str, list[str]]]:
    """(name, scorer arguments) for every corpus the anchor ran, and Veil's own benign set."""
    def there(*parts: str) -> str:
        path = corpora.joinpath(*parts)
        if not path.exists():
            sys.exit(f"{path} is missing: is --corpora the shared corpora directory?")
        return str(path)

    lines = []
    for path in sorted(glob.glob(str(corpora / "libinjection" / "data" / "*.txt"))):
        name = os.path.basename(path)
        if name.startswith("sqli-"):
            lines += ["--lines", f"{path}:attack:libinjection/sqli"]
        elif name.startswith("xss-"):
            lines += ["--lines", f"{path}:attack:libinjection/xss"]
        elif name == "false_positives.txt":
            lines += ["--lines", f"{path}:benign:libinjection/false_positives"]
    return [
        ("gotestwaf", ["--gotestwaf", there("gotestwaf", "testcases")]),
        ("crs-v3.3.4", ["--crs", there("coreruleset-v3.3.4", "tests", "regression", "tests"),
                        "--crs-rules", there("coreruleset-v3.3.4", "rule-paranoia-levels.tsv")]),
        ("crs-v4", ["--crs", there("coreruleset", "tests", "regression", "tests"),
                    "--crs-rules", there("coreruleset", "rule-paranoia-levels.tsv")]),
        ("libinjection", lines),
        ("own-benign", ["--jsonl", str(ROOT / "bench" / "waf" / "benign" / "benign.jsonl")]),
    ]


def score(scorer: str, veil: Veil, name: str, args: list[str], out: Path,
          workers: int) -> list[dict]:
    """Replay one corpus through Veil; the per-case rows."""
    cases = out / f"{name}.json"
    with open(out / f"{name}.txt", "w") as text:
        subprocess.run([sys.executable, scorer, "--target", f"https://127.0.0.1:{veil.edge}",
                        "--host", SITE, "--workers", str(workers), "--json", str(cases), *args],
                       check=True, stdout=text, stderr=subprocess.STDOUT)
    return json.loads(cases.read_text())


# -- the table -------------------------------------------------------------------------------


def rate(rows: list[dict]) -> str:
    n = len(rows)
    blocked = sum(r["blocked"] for r in rows)
    return f"{blocked / n:.1%} ({blocked}/{n})" if n else "-"


def statuses(rows: list[dict]) -> str:
    counts = collections.Counter(r["status"] for r in rows if not r["blocked"]
                                 and not 200 <= r["status"] < 300)
    return ", ".join(f"{n} × {s if s != -1 else 'no answer'}"
                     for s, n in sorted(counts.items())) or "none"


def table(results: dict[str, list[dict]]) -> str:
    gtw = results.get("gotestwaf", [])
    v3 = results.get("crs-v3.3.4", [])
    v4 = results.get("crs-v4", [])
    lib = results.get("libinjection", [])
    own = results.get("own-benign", [])

    def kind(rows: list[dict], wanted: str) -> list[dict]:
        return [r for r in rows if r["kind"] == wanted]

    gtw_attacks = kind(gtw, "attack")
    lines = [
        ("GoTestWAF attack sets, blocked", rate(gtw_attacks), "39.3%", "≥ 90%", gtw_attacks),
        ("… without the Base64 ones", rate([r for r in gtw_attacks
                                            if "base64" not in r["id"].lower()]),
         "60.1%", "", []),
        ("GoTestWAF false-pos texts, blocked", rate(kind(gtw, "benign")), "22.7%", "≤ 2%",
         kind(gtw, "benign")),
        ("CRS v4 tests of PL1 rules expecting detection",
         rate([r for r in kind(v4, "attack") if r["pl"] == 1]), "71.0%", "≥ 80%",
         [r for r in kind(v4, "attack") if r["pl"] == 1]),
        ("CRS v4 tests, all request-phase, expecting detection", rate(kind(v4, "attack")),
         "51.5%", "", kind(v4, "attack")),
        ("CRS v3.3.4 tests of PL1 rules expecting detection",
         rate([r for r in kind(v3, "attack") if r["pl"] == 1]), "98.1%", "",
         [r for r in kind(v3, "attack") if r["pl"] == 1]),
        ("libinjection SQLi", rate([r for r in kind(lib, "attack")
                                    if r["class"].endswith("sqli")]), "99.95%", "≥ 99%",
         [r for r in kind(lib, "attack") if r["class"].endswith("sqli")]),
        ("libinjection XSS", rate([r for r in kind(lib, "attack")
                                   if r["class"].endswith("xss")]), "99.7%", "≥ 99%",
         [r for r in kind(lib, "attack") if r["class"].endswith("xss")]),
        ("libinjection false_positives, blocked", rate(kind(lib, "benign")), "8.8%", "≤ 3%",
         kind(lib, "benign")),
        ("Veil's own benign corpus, blocked", rate(kind(own, "benign")), "—", "≤ 0.5%",
         kind(own, "benign")),
    ]
    out = [("| corpus | anchor (ModSecurity + CRS 3.3.4) | Veil through the proxy | target |"
            " not blocked and not 2xx |"),
           "|---|---|---|---|---|"]
    for name, value, anchor, target, rows in lines:
        out.append(f"| {name} | {anchor} | **{value}** | {target} |"
                   f" {statuses(rows) if rows else ''} |")
    return "\n".join(out) + "\n"


# -- what the proxy changes --------------------------------------------------------------------


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_sent(raw: bytes, host: str) -> bytes:
    """The scorer's send(): every case's Host replaced by --host (added when missing)."""
    raw = re.sub(rb"(?im)^Host:[^\r\n]*", b"Host: " + host.encode(), raw, count=1)
    if not re.search(rb"(?im)^Host:", raw.split(b"\r\n\r\n", 1)[0]) and b"\r\n" in raw:
        line, rest = raw.split(b"\r\n", 1)
        raw = line + b"\r\nHost: " + host.encode() + b"\r\n" + rest
    return raw


def compare(scorer_path: str, corpora_args: list[tuple[str, list[str]]],
            results: dict[str, list[dict]], paranoia: int, threshold: int) -> str:
    """
    The engine's verdict in-process on every case, twice: as the offline
    benchmark builds it (bench/waf/efficacy.py: a case without Host gets
    localhost) and on the bytes the scorer sent (Host: the site); and the
    cases where the replay through the proxy answered otherwise.
    """
    sys.path.insert(0, str(ROOT))
    from veil.waf.engine import Engine
    from veil.waf.policy import SitePolicy
    from veil.waf.rawrequest import Refused, parse

    scorer = _load(scorer_path, "waf_score")
    efficacy = _load(str(ROOT / "bench" / "waf" / "efficacy.py"), "efficacy")
    engine = Engine()
    policy = SitePolicy(uuid.uuid4(), paranoia=paranoia, threshold=threshold)

    def offline(raw: bytes) -> int:
        """The status the engine and the proxy's parser (as veil.waf.rawrequest reads it) give."""
        try:
            request = parse(raw).request()
        except Refused as e:
            return e.status
        return 403 if engine.inspect(request, policy).blocked else 200

    report = ["# What the proxy changes: replay against the engine in-process", ""]
    for name, args in corpora_args:
        parsed = scorer.argparse.ArgumentParser()
        parsed.add_argument("--crs"), parsed.add_argument("--crs-rules")
        parsed.add_argument("--gotestwaf")
        parsed.add_argument("--lines", action="append", default=[])
        parsed.add_argument("--jsonl", action="append", default=[])
        a = parsed.parse_args(args)
        cases = []
        if a.crs:
            cases += list(scorer.load_crs(a.crs, scorer.load_pl_map(a.crs_rules)
                                          if a.crs_rules else None))
        if a.gotestwaf:
            cases += list(scorer.load_gotestwaf(a.gotestwaf))
        for spec in a.lines:
            cases += list(scorer.load_lines(spec))
        for path in a.jsonl:
            cases += list(scorer.load_jsonl(path))
        cases = [c for c in cases if c.kind != "skipped"]
        replayed = results[name]
        if [c.ident for c in cases] != [r["id"] for r in replayed]:
            report.append(f"## {name}: the cases do not line up with the replay; skipped\n")
            continue
        groups: dict[tuple, list[str]] = collections.defaultdict(list)
        shifts = collections.Counter()
        for case, row in zip(cases, replayed):
            benchmarked = offline(efficacy.with_host(case.raw, "localhost"))
            sent = offline(_as_sent(case.raw, SITE))
            if (benchmarked == 403) != (sent == 403):
                shifts[(case.kind, benchmarked == 403, sent == 403)] += 1
            status = row["status"]
            if sent != status and not (200 <= sent < 300 and 200 <= status < 300):
                groups[(case.kind, case.cls, sent, status)].append(case.ident)
        report.append(f"## {name}\n")
        report.append("Host header replaced by the site's name (offline, as benchmarked →"
                      " as sent): " + (", ".join(
                          f"{n} {kind} case(s) {'blocked' if a else 'passed'} → "
                          f"{'blocked' if b else 'passed'}" for (kind, a, b), n in
                          sorted(shifts.items())) or "no change") + "\n")
        if not groups:
            report.append("The replay answered every case as the engine and the proxy's parser"
                          " do in-process.\n")
            continue
        report.append("| kind | class | in-process | replay | cases | examples |")
        report.append("|---|---|---|---|---|---|")
        for (kind, cls, sent, status), idents in sorted(groups.items(),
                                                        key=lambda kv: -len(kv[1])):
            shown = {-1: "no answer"}.get(status, status)
            report.append(f"| {kind} | {cls} | {sent} | {shown} | {len(idents)} |"
                          f" {', '.join(idents[:4])[:160]} |")
        report.append("")
    return "\n".join(report) + "\n"


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", default=os.environ.get("VEIL_WAF_SCORER"),
                    help="the shared replay scorer, waf_score.py (or VEIL_WAF_SCORER)")
    ap.add_argument("--corpora", default=os.environ.get("VEIL_WAF_CORPORA"),
                    help="the shared corpora directory (or VEIL_WAF_CORPORA)")
    ap.add_argument("--out", help="where results go (default: a new temporary directory)")
    ap.add_argument("--only", help="comma-separated corpus names: gotestwaf, crs-v3.3.4,"
                    " crs-v4, libinjection, own-benign")
    ap.add_argument("--paranoia", type=int, default=1)
    ap.add_argument("--threshold", type=int, default=5)
    ap.add_argument("--inspect-body-limit", help="the site's inspection limit (64k, 1MiB, ...)")
    ap.add_argument("--body-overflow", choices=("inspect-prefix", "block"))
    ap.add_argument("--workers", type=int, default=16, help="the scorer's concurrent clients")
    ap.add_argument("--compare", action="store_true",
                    help="also judge every case in-process and list where the replay differs")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--results", help="do not replay: reuse the per-case results in this"
                    " directory (a previous --out), e.g. to --compare again")
    args = ap.parse_args(argv)
    if not args.scorer or not args.corpora:
        ap.error("give --scorer and --corpora (or VEIL_WAF_SCORER and VEIL_WAF_CORPORA)")
    out = Path(args.out or tempfile.mkdtemp(prefix="veil-replay-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    selected = runs(Path(args.corpora).resolve())
    if args.only:
        wanted = set(args.only.split(","))
        selected = [(name, a) for name, a in selected if name in wanted]

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    results: dict[str, list[dict]] = {}
    if args.results:
        for name, _ in selected:
            results[name] = json.loads((Path(args.results) / f"{name}.json").read_text())
    else:
        results = replay(args, selected, out, commit)
    body = (f", inspecting {args.inspect_body_limit or '64 KiB'} of bodies,"
            f" {args.body_overflow or 'inspect-prefix'} beyond")
    text = (f"Veil {commit}, paranoia {args.paranoia}, threshold {args.threshold}, block mode"
            f"{body}, through the proxy (TLS, one connection per case)\n\n{table(results)}")
    (out / "table.md").write_text(text)
    print("\n" + text)
    if args.compare:
        differences = compare(args.scorer, selected, results, args.paranoia, args.threshold)
        (out / "differences.md").write_text(differences)
        print(differences)
    print(f"results in {out}")
    return 0


def replay(args: argparse.Namespace, selected: list[tuple[str, list[str]]], out: Path,
           commit: str) -> dict[str, list[dict]]:
    """Start the origin and Veil, replay every selected corpus, stop Veil."""
    origin = start_origin()
    veil = Veil(out, {})
    results: dict[str, list[dict]] = {}
    try:
        print(f"Veil (commit {commit}) starting in {veil.data}", flush=True)
        veil.start(args.start_timeout)
        veil.cli("sites", "add", SITE, "--origin", f"http://127.0.0.1:{origin}", "--verified")
        settings = ["--paranoia", str(args.paranoia), "--threshold", str(args.threshold)]
        if args.inspect_body_limit:
            settings += ["--inspect-body-limit", args.inspect_body_limit]
        if args.body_overflow:
            settings += ["--body-overflow", args.body_overflow]
        veil.cli("sites", "set", SITE, *settings)
        deadline = time.monotonic() + 30
        while veil.get("/") != 200:
            if time.monotonic() > deadline:
                sys.exit(f"{SITE} does not answer 200 through Veil: see {veil.log}")
            time.sleep(0.5)
        if veil.get("/?q=<script>alert(1)</script>") != 403:
            sys.exit("an XSS was not blocked: is the WAF on?")
        for name, scorer_args in selected:
            started = time.monotonic()
            print(f"replaying {name} ...", flush=True)
            results[name] = score(args.scorer, veil, name, scorer_args, out, args.workers)
            print(f"  {len(results[name])} cases in {time.monotonic() - started:.0f} s",
                  flush=True)
    finally:
        veil.stop()
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
