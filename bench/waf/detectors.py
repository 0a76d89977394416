"""
Efficacy and cost of Veil's own SQL-injection and XSS detectors
(C{veil.waf.sqli}, C{veil.waf.xss}), called directly -- no proxy, no engine:

    .venv/bin/python bench/waf/detectors.py --corpora DIR [--paranoia N]
        [--show N] [--no-speed] [--only sqli|xss]

DIR holds the public corpora, read at run time and never copied into the
repository (C{libinjection/}, C{gotestwaf/}, C{coreruleset/},
C{coreruleset-v3.3.4/}; see their SOURCES.md); it defaults to
C{$VEIL_CORPORA}.  Needs PyYAML for the GoTestWAF and CRS files.

What is counted:

  - libinjection C{sqli-*.txt} / C{xss-*.txt}: one URL-encoded input per
    line, decoded as libinjection's reader does (C{+} is a space); a line
    is detected when the class's detector flags it.  C{false_positives.txt}
    must not be flagged, by either detector.
  - GoTestWAF: each payload of the SQL-injection and XSS sets once (the
    engine decodes the encoders' URL and Base64 forms before a detector
    sees the value); the C{false-pos} texts must not be flagged.
  - OWASP CRS regression tests of the 942 (SQLi) and 941 (XSS) rules, v4
    and v3.3.4: a test that expects its rule to fire is detected when a
    value of its request (query and form arguments and their names,
    cookies, headers, a JSON body's leaves, a raw body) is flagged; tests
    that only expect a rule I{not} to fire are look-alikes, reported apart
    (not a benign set).  Figures are split by the paranoia level of the
    rule tested.
  - C{detectors_benign.txt} (next to this script): Veil's own benign texts.

Every value is also tried as the engine would transform it (URL-decoded up
to three times, with and without C{+} as a space; HTML entities decoded;
Unicode NFKC), and counts as flagged when any variant is.

The micro-benchmark times C{detect} per call on attack and benign values of
20-200 characters, on the values that pass each detector's PREFILTER, and
the PREFILTER (hyperscan) scan, and gives the PREFILTER's hit rate on
benign values: each value's best and median of 7 batches of 10 calls,
averaged over the values.  Other work on the machine moves the medians;
the load average is printed.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import statistics
import sys
import time
import unicodedata
import urllib.parse
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import importlib


class _Detectors(dict):
    """The detector modules, imported when first asked for."""

    def __missing__(self, name: str):
        module = self[name] = importlib.import_module(f"veil.waf.{name}")
        return module


DETECTORS = _Detectors()


# ------------------------------------------------------------------ values
def variants(value: str) -> list[str]:
    """The value and the forms the engine's transformations give it."""
    out = [value]
    for decode in (urllib.parse.unquote, urllib.parse.unquote_plus):
        v = value
        for _ in range(3):
            u = decode(v)
            if u == v:
                break
            if u not in out:
                out.append(u)
            v = u
    for v in list(out):
        if "&" in v:
            h = html.unescape(v)
            if h != v:
                out.append(h)
    for v in list(out):
        n = unicodedata.normalize("NFKC", v)
        if n != v:
            out.append(n)
    return out


def flagged(det, value: str, paranoia: int) -> str | None:
    for v in variants(value):
        r = det.detect(v, paranoia)
        if r:
            return r
    return None


# ----------------------------------------------------------------- corpora
def libinjection_lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line or line.startswith("#"):
            continue
        raw = urllib.parse.unquote_to_bytes(line.encode("latin-1").replace(b"+", b" "))
        out.append(raw.decode("utf-8", "replace"))
    return out


def _yaml(path: Path):
    import yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError:  # Go's YAML accepts \' inside double quotes
        return yaml.load(text.replace("\\'", "'"), Loader=loader)


def gotestwaf_sets(root: Path) -> dict[str, list[str]]:
    """Payloads per class: sqli, xss, benign (the false-pos texts)."""
    sets: dict[str, list[str]] = {"sqli": [], "xss": [], "benign": []}
    for path in sorted(root.glob("testcases/*/*.y*ml")):
        doc = _yaml(path) or {}
        kind = (doc.get("type") or "").lower()
        if "false" in path.parent.name:
            cls = "benign"
        elif "sql" in kind and "nosql" not in kind:
            cls = "sqli"
        elif "xss" in kind:
            cls = "xss"
        else:
            continue
        sets[cls].extend(str(p) for p in doc.get("payload") or [])
    return sets


def _form_pairs(body: str) -> list[str]:
    out = []
    for part in body.split("&"):
        name, _, value = part.partition("=")
        out.append(urllib.parse.unquote_plus(name))
        out.append(urllib.parse.unquote_plus(value))
    return out


def _json_leaves(doc) -> list[str]:
    if isinstance(doc, dict):
        return [x for k, v in doc.items() for x in [str(k)] + _json_leaves(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in _json_leaves(v)]
    return [] if doc is None else [str(doc)]


def _xml_values(body: str) -> list[str]:
    """Text and attribute values of an XML body, as the engine inspects
    them; the whole body when it is not well-formed."""
    import xml.etree.ElementTree as ET

    if "<!DOCTYPE" in body or "<!ENTITY" in body:
        return [body]
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return [body]
    out = []
    for el in root.iter():
        out.extend(el.attrib.values())
        if el.text and el.text.strip():
            out.append(el.text)
    return out


_SKIP_HEADERS = {"host", "content-length", "content-type", "connection", "accept",
                 "accept-encoding", "accept-language", "proxy-connection"}


def request_values(method: str, uri: str, headers: list[tuple[str, str]], body: str) -> list[str]:
    """The values of a request that a WAF's SQLi/XSS rules inspect."""
    values = []
    path, _, query = uri.partition("?")
    path = urllib.parse.unquote(path)
    values.append(path)
    values.extend(path.split("/")[1:])
    if query:
        values.extend(_form_pairs(query))
    ctype = ""
    for name, value in headers:
        low = name.lower()
        if low == "content-type":
            ctype = value.lower()
        if low == "cookie":
            for part in value.split(";"):
                k, _, v = part.strip().partition("=")
                values.extend([k, v])
        elif low not in _SKIP_HEADERS:
            values.append(value)
    if body:
        if "json" in ctype:
            try:
                values.extend(_json_leaves(json.loads(body)))
            except ValueError:
                values.append(body)
        elif "xml" in ctype or body.lstrip().startswith("<?xml"):
            values.extend(_xml_values(body))
        elif "multipart" in ctype:
            values.append(body)
        else:
            values.extend(_form_pairs(body))
            values.append(body)
    return [v for v in values if v]


def _raw_request_values(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    if not _:
        head, _, body = text.partition("\n\n")
    lines = head.splitlines()
    if not lines:
        return []
    parts = lines[0].split(" ")
    uri = parts[1] if len(parts) > 1 else "/"
    hdrs = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs.append((k.strip(), v.strip()))
    return request_values(parts[0], uri, hdrs, body)


def crs_cases(root: Path, prefix: str) -> list[tuple[str, bool, int, list[str]]]:
    """(id, expects detection, rule id, values) for the tests of rules C{prefix}xxx."""
    pl_path = root / "rule-paranoia-levels.tsv"
    out = []
    folders = sorted(root.glob(f"tests/regression/tests/REQUEST-{prefix}-*"))
    for path in sorted(p for f in folders for p in f.glob("*.yaml")):
        doc = _yaml(path) or {}
        file_rule = int(doc.get("rule_id") or path.stem[:6] or 0)
        for n, test in enumerate(doc.get("tests") or [], 1):
            stages = [s.get("stage", s) for s in test.get("stages") or []]
            if len(stages) != 1:
                continue
            st = stages[0]
            inp, outp = st.get("input") or {}, st.get("output") or {}
            log = dict(outp.get("log") or {})
            expect = log.get("expect_ids") or outp.get("log_contains")
            no_expect = log.get("no_expect_ids") or outp.get("no_log_contains")
            if not expect and not no_expect:
                continue
            if inp.get("encoded_request"):
                values = _raw_request_values(base64.b64decode(inp["encoded_request"]))
            else:
                data = inp.get("data") or ""
                if isinstance(data, list):
                    data = "\r\n".join(str(x) for x in data)
                hdrs = [(str(k), str(v)) for k, v in (inp.get("headers") or {}).items()]
                values = request_values(str(inp.get("method", "GET")), str(inp.get("uri", "/")),
                                        hdrs, str(data))
            ident = f"{file_rule}-{test.get('test_id', test.get('test_title', n))}"
            out.append((ident, bool(expect), file_rule, values))
    return out, _pl_map(pl_path)


def _pl_map(path: Path) -> dict[int, int]:
    pl = {}
    if path.exists():
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) >= 2 and f[0].isdigit():
                pl[int(f[0])] = int(f[1])
    return pl


def benign_records(path: Path) -> list[str]:
    """Records of the benign file: separated by lines holding only %%; the
    first record is the file's header."""
    records, cur = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line == "%%":
            records.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    records.append("\n".join(cur))
    return [r.strip("\n") for r in records[1:] if r.strip()]


# ---------------------------------------------------------------- efficacy
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, corpus: str, det: str, kind: str, hits: int, n: int) -> None:
        self.rows.append((corpus, det, kind, hits, n))

    def show(self) -> None:
        print("| corpus | detector | expected | flagged | n | rate |")
        print("|---|---|---|---:|---:|---:|")
        for corpus, det, kind, hits, n in self.rows:
            rate = f"{100.0 * hits / n:.2f} %" if n else "-"
            print(f"| {corpus} | {det} | {kind} | {hits} | {n} | {rate} |")


def efficacy(corpora: Path, paranoia: int, show: int, only: str | None) -> None:
    table = Table()
    dets = [only] if only else ["sqli", "xss"]
    lib = corpora / "libinjection" / "data"
    if lib.is_dir():
        fp_lines = libinjection_lines(lib / "false_positives.txt")
        for name in dets:
            det = DETECTORS[name]
            misses, n = [], 0
            per_file = Counter()
            for path in sorted(lib.glob(f"{name}-*.txt")):
                for line in libinjection_lines(path):
                    n += 1
                    if not flagged(det, line, paranoia):
                        misses.append((path.name, line))
                        per_file[path.name] += 1
            table.add("libinjection", name, "attack", n - len(misses), n)
            _show(f"libinjection {name} misses {dict(per_file)}", misses, show)
            fps = [(x, r) for x in fp_lines if (r := flagged(det, x, paranoia))]
            table.add("libinjection false_positives", name, "benign", len(fps), len(fp_lines))
            _show(f"libinjection false positives ({name})", fps, show)
        fps = [x for x in fp_lines if any(flagged(DETECTORS[d], x, paranoia) for d in dets)]
        table.add("libinjection false_positives", "+".join(dets), "benign", len(fps), len(fp_lines))
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("PyYAML is missing: the GoTestWAF and CRS corpora are skipped "
              "(pip install pyyaml)", file=sys.stderr)
        yaml_ok = False
    else:
        yaml_ok = True
    gtw = corpora / "gotestwaf"
    if gtw.is_dir() and yaml_ok:
        sets = gotestwaf_sets(gtw)
        for name in dets:
            det = DETECTORS[name]
            misses = [p for p in sets[name] if not flagged(det, p, paranoia)]
            table.add("GoTestWAF", name, "attack", len(sets[name]) - len(misses), len(sets[name]))
            _show(f"GoTestWAF {name} misses", [(m[:160],) for m in misses], show)
            fps = [(p, r) for p in sets["benign"] if (r := flagged(det, p, paranoia))]
            table.add("GoTestWAF false-pos", name, "benign", len(fps), len(sets["benign"]))
            _show(f"GoTestWAF false positives ({name})", fps, show)
    for version in ("coreruleset", "coreruleset-v3.3.4"):
        root = corpora / version
        if not root.is_dir() or not yaml_ok:
            continue
        for name, prefix in (("sqli", "942"), ("xss", "941")):
            if name not in dets:
                continue
            det = DETECTORS[name]
            cases, pl = crs_cases(root, prefix)
            by_pl: dict[int, list[int]] = {}
            misses, look, lookalikes = [], [0, 0], []
            for ident, expect, rule, values in cases:
                hit = next((r for v in values if (r := flagged(det, v, paranoia))), None)
                if expect:
                    level = pl.get(rule, 0)
                    cell = by_pl.setdefault(level, [0, 0])
                    cell[1] += 1
                    if hit:
                        cell[0] += 1
                    elif level == 1:
                        misses.append((ident, " | ".join(v[:120] for v in values if len(v) > 2)[:300]))
                else:
                    look[1] += 1
                    look[0] += bool(hit)
                    if hit:
                        lookalikes.append((ident, hit, " | ".join(v[:100] for v in values if len(v) > 2)[:250]))
            for level in sorted(by_pl):
                table.add(f"CRS {version[13:] or 'v4'} {prefix}xxx PL{level}", name, "attack",
                          *by_pl[level])
            table.add(f"CRS {version[13:] or 'v4'} {prefix}xxx no-expect (look-alikes)", name,
                      "either", *look)
            _show(f"CRS {version} {name} PL1 misses", misses, show)
            _show(f"CRS {version} {name} look-alikes flagged", lookalikes, show)
    bpath = HERE / "detectors_benign.txt"
    if bpath.exists():
        records = benign_records(bpath)
        for name in dets:
            det = DETECTORS[name]
            fps = [(r[:200], why) for r in records if (why := flagged(det, r, paranoia))]
            table.add("Veil benign (detectors_benign.txt)", name, "benign", len(fps), len(records))
            _show(f"Veil benign false positives ({name})", fps, show)
    print(f"\nparanoia {paranoia}\n")
    table.show()


def _show(title: str, items: list, limit: int) -> None:
    if not limit or not items:
        return
    print(f"\n## {title} ({len(items)})", file=sys.stderr)
    for item in items[:limit]:
        print("   ", " :: ".join(repr(x) if isinstance(x, str) else str(x) for x in item),
              file=sys.stderr)


# -------------------------------------------------------------------- speed
def _per_call(fn, values: list, rounds: int = 7, batch: int = 10) -> tuple[float, float, float]:
    """
    The time of one call, in microseconds, averaged over the values: with
    each value's best of C{rounds} batches (what a call costs when other
    work on the machine does not get in the way), and with each value's
    median batch; and the slowest value's best.
    """
    best, median = [], []
    clock = time.perf_counter
    for v in values:
        times = []
        for _ in range(rounds):
            t0 = clock()
            for _ in range(batch):
                fn(v)
            times.append((clock() - t0) / batch)
        best.append(min(times))
        median.append(statistics.median(times))
    return statistics.fmean(best) * 1e6, statistics.fmean(median) * 1e6, max(best) * 1e6


def speed(corpora: Path, only: str | None) -> None:
    import re

    lib = corpora / "libinjection" / "data"
    records = benign_records(HERE / "detectors_benign.txt")
    benign = [r for r in records if 20 <= len(r) <= 200]
    print(f"\nload average at start: {os.getloadavg()[0]:.2f}")
    print("\n| detector | values | n | µs per call (best of 7) | µs per call (median of 7) "
          "| slowest value, µs |")
    print("|---|---|---:|---:|---:|---:|")
    for name in [only] if only else ["sqli", "xss"]:
        det = DETECTORS[name]
        attacks = [x for p in sorted(lib.glob(f"{name}-*.txt")) for x in libinjection_lines(p)
                   if 20 <= len(x) <= 200]
        attacks = attacks[:: max(1, len(attacks) // 400)]
        pre = re.compile(det.PREFILTER)
        passing = [b for b in benign if pre.search(b)]
        for label, values in (("attacks (libinjection, 20-200 chars)", attacks),
                              ("benign (own set, 20-200 chars)", benign),
                              ("benign that pass PREFILTER", passing)):
            if values:
                best, median, worst = _per_call(det.detect, values)
                print(f"| {name} | {label} | {len(values)} | {best:.1f} | {median:.1f} "
                      f"| {worst:.1f} |")
        print(f"| {name} | PREFILTER hit rate on benign | {len(passing)}/{len(benign)} "
              "| - | - | - |")
        try:
            import hyperscan
        except ImportError:
            continue
        db = hyperscan.Database()
        db.compile(expressions=[det.PREFILTER.encode()], ids=[1], elements=1,
                   flags=[hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8])
        scratch = hyperscan.Scratch(db)
        encoded = [b.encode() for b in benign]

        def scan(v: bytes, db=db, scratch=scratch) -> None:
            db.scan(v, match_event_handler=_noop, scratch=scratch)

        best, median, worst = _per_call(scan, encoded)
        print(f"| {name} | PREFILTER scan (hyperscan), benign | {len(encoded)} "
              f"| {best:.2f} | {median:.2f} | {worst:.2f} |")


def _noop(*args) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default=os.environ.get("VEIL_CORPORA"),
                    help="directory of the public corpora (default $VEIL_CORPORA)")
    ap.add_argument("--paranoia", type=int, default=1)
    ap.add_argument("--show", type=int, default=0, help="print up to N misses and false positives")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--only", choices=["sqli", "xss"])
    args = ap.parse_args(argv)
    if not args.corpora:
        ap.error("give --corpora DIR or set VEIL_CORPORA")
    corpora = Path(args.corpora)
    efficacy(corpora, args.paranoia, args.show, args.only)
    if not args.no_speed:
        speed(corpora, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
