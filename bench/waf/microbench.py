#!/usr/bin/env python3
"""
Micro-benchmark of the signature engine in-process: the median time of
Engine.inspect per request, for the request shapes issue 11 sets cost
targets for (a GET with 5 query arguments: <= 15 us; an 8 KiB JSON body:
<= 150 us; the shared harness's S1 request, a GET with a Host header only,
which must cost well under 15 us) and a few more.  Each iteration builds
the Request view afresh, as the proxy does per request, and inspects it at
paranoia 1 with no exclusions.

What varies from request to request in real traffic varies here too: the
path of a page, query values, form fields and JSON strings are different in
every iteration (the engine remembers what a value matched, so a benchmark
that repeats one request measures only the memo).  Browser headers, cookie
names and JSON keys stay the same, as they do for the visitors of a site.
S1 is the same request every time, as wrk sends it.  --cold empties the
engine's memo before every request: every value is scanned (the worst
case: a new client, a new user agent, every value unseen).

    .venv/bin/python bench/waf/microbench.py [--rounds 7] [--iterations 2000] [--cold]
    .venv/bin/python bench/waf/microbench.py --profile CASE [--cold]
    .venv/bin/python bench/waf/microbench.py --instructions [--iterations 200] [--cold]

The median of each round is taken and the best and median round reported
(the machine is shared; the best round is the least disturbed).  --profile
runs one case under cProfile and prints the top functions.

--instructions counts the instructions each request costs instead, a figure
that does not depend on what else the machine is doing: each case runs in
its own process under valgrind's callgrind with instrumentation switched on
only around the measured iterations (by a few lines of C built with gcc
into a temporary directory, calling callgrind's client requests).  Under
valgrind the CPU has no AVX-512, so hyperscan runs its AVX2 code: the
counts compare one version of the engine with another, not with the
microseconds above.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import os
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from veil.waf.engine import Engine
from veil.waf.policy import SitePolicy
from veil.waf.request import Request

BROWSER = [
    (b"Host", b"shop.example.com"),
    (b"User-Agent", (b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
                     b" (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.9"),
    (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
    (b"Referer", b"https://shop.example.com/collections/womens?page=2"),
    (b"Cookie", b"session=Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODkw; _ga=GA1.2.123456789.1733300000; theme=dark"),
]


def json_body(size: int, variant: int = 0) -> bytes:
    """An order of about C{size} bytes; C{variant} makes every string value its own."""
    rnd = random.Random(7)
    words = ["order", "item", "price", "shipping", "address", "street", "city", "name", "email",
             "phone", "note", "colour", "size", "quantity", "gift", "wrap", "message",
             "delivery", "window"]
    items: list[dict] = []
    doc = {"customer": {"id": 4211, "email": f"ana.silva{variant}@example.com",
                        "name": "Ana Silva"},
           "items": items, "currency": "EUR"}
    while len(json.dumps(doc)) < size:
        items.append({"sku": f"SKU-{rnd.randint(1000, 9999)}-{variant}", "qty": rnd.randint(1, 5),
                      "price": round(rnd.uniform(1, 300), 2),
                      "title": " ".join(rnd.choices(words, k=4)) + f" {variant}",
                      "options": {"colour": rnd.choice(["red", "navy"]), "size": "M"}})
    items.pop()
    return json.dumps(doc).encode()


def form_body(variant: int) -> bytes:
    return (b"name=Ana+Silva&email=ana.silva%d%%40example.com&address=%d+Main+St.&city=Springfield"
            b"&zip=94103&country=US&phone=%%2B1+555+010+%04d&notes=Please+leave+the+parcel+at+the"
            b"+back+door%%2C+the+dog+is+friendly%%21+%d&newsletter=0&csrf=8f14e45fceea167a5a36d%08d"
            b"&items%%5B0%%5D%%5Bsku%%5D=SKU-%d&items%%5B0%%5D%%5Bqty%%5D=2"
            b"&items%%5B1%%5D%%5Bsku%%5D=SKU-2210&items%%5B1%%5D%%5Bqty%%5D=1"
            b"&gift_message=Happy+birthday+Sam%%21+Love%%2C+Ana+%%26+Tom+%d&step=3"
            b"&payment_method=card&shipping=express&terms=on&utm_source=newsletter"
            b"&utm_medium=email" % ((variant,) * 7))


POST_FORM = [(b"Content-Type", b"application/x-www-form-urlencoded")]
POST_JSON = [(b"Content-Type", b"application/json"),
             (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MjExIn0.c2lnbmF0dXJl")]
_WORDS = ["merino", "wool", "sweater", "linen", "shirt", "navy", "boots", "leather", "scarf"]

#: name -> a function of the iteration's number giving (method, target, headers, body).
CASES = {
    # The shared harness's S1 request: wrk's GET with only a Host header, always the same.
    "S1: GET /1k, Host only": lambda i: (b"GET", b"/1k", [(b"Host", b"127.0.0.1:8080")], b""),
    "GET, browser, no query": lambda i: (
        b"GET", b"/collections/womens/products/merino-sweater-%d" % i, BROWSER, b""),
    "GET, 5 query args": lambda i: (
        b"GET", b"/search?q=%s+%s+%d&page=%d&sort=price_asc&size=M&color=navy"
        % (_WORDS[i % 9].encode(), _WORDS[i * 7 % 9].encode(), i, i % 50), BROWSER, b""),
    "POST form, 502 B": lambda i: (
        b"POST", b"/checkout", BROWSER + POST_FORM + [
            (b"Content-Length", str(len(form_body(i))).encode())], form_body(i)),
    # The shared harness's S5 posts one form again and again: every value is in the memo.
    "POST form, repeated": lambda i: (
        b"POST", b"/checkout", [(b"Host", b"127.0.0.1:8080")] + POST_FORM + [
            (b"Content-Length", str(len(form_body(0))).encode())], form_body(0)),
    "POST JSON, 8 KiB": lambda i: (
        b"POST", b"/api/v1/orders", BROWSER[:5] + POST_JSON + [
            (b"Content-Length", str(len(json_body(8192, i))).encode())], json_body(8192, i)),
    "GET, attack (SQLi)": lambda i: (b"GET", b"/item?id=%d%%27%%20OR%%201=1--" % i, BROWSER, b""),
}


def inputs(name: str, count: int, offset: int = 0) -> list[tuple]:
    """The inputs of C{count} iterations of a case (made before anything is timed)."""
    make = CASES[name]
    return [make(offset + i) for i in range(count)]


def measure(engine: Engine, policy: SitePolicy, cases: list[tuple], cold: bool) -> float:
    samples = []
    clock = time.perf_counter_ns
    for method, target, headers, body in cases:
        if cold:
            engine.forget()
        start = clock()
        engine.inspect(Request(method, target, headers, body), policy)
        samples.append(clock() - start)
    return statistics.median(samples) / 1000.0


_CALLGRIND_C = r"""
#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_TOGGLE_COLLECT; }
void pause(void) { CALLGRIND_TOGGLE_COLLECT; }
void stop(void) { CALLGRIND_DUMP_STATS_AT("measured"); }
"""


def _callgrind_helper(folder: str) -> str:
    source = os.path.join(folder, "cg.c")
    library = os.path.join(folder, "cg.so")
    with open(source, "w") as out:
        out.write(_CALLGRIND_C)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", library, source], check=True)
    return library


def under_callgrind(name: str, iterations: int, library: str, cold: bool) -> int:
    """In the process valgrind runs: the measured iterations between start() and stop()."""
    helper = ctypes.CDLL(library)
    engine = Engine()
    policy = SitePolicy(uuid.uuid4())
    warm = inputs(name, 50, offset=10**6)
    todo = inputs(name, iterations)
    for method, target, headers, body in warm:
        engine.inspect(Request(method, target, headers, body), policy)
    if cold:
        # The memo is emptied between requests outside the count.
        for method, target, headers, body in todo:
            engine.forget()
            helper.start()
            engine.inspect(Request(method, target, headers, body), policy)
            helper.pause()
        helper.stop()
        return 0
    helper.start()
    for method, target, headers, body in todo:
        engine.inspect(Request(method, target, headers, body), policy)
    helper.stop()
    return 0


def count_instructions(iterations: int, names: list[str], cold: bool) -> int:
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        print("--instructions needs valgrind and gcc", file=sys.stderr)
        return 2
    print(f"{'request':24} {'instructions':>14}  (per request, mean of {iterations},"
          f" callgrind{', memo emptied before each' if cold else ''})")
    with tempfile.TemporaryDirectory() as folder:
        library = _callgrind_helper(folder)
        for name in names:
            out = os.path.join(folder, "callgrind.out")
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--quiet",
                 f"--callgrind-out-file={out}", sys.executable, __file__, "--callgrind-child",
                 name, "--iterations", str(iterations), "--library", library,
                 *(["--cold"] if cold else [])],
                check=True)
            dumps = [f for f in os.listdir(folder) if f.startswith("callgrind.out")]
            total = None
            for dump in dumps:
                with open(os.path.join(folder, dump)) as f:
                    text = f.read()
                if "measured" in text:
                    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
                    total = int(found.group(1)) if found else None
                os.unlink(os.path.join(folder, dump))
            shown = f"{total / iterations:14,.0f}" if total else f"{'?':>14}"
            print(f"{name:24} {shown}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=None,
                    help="per round (2000), or per case with --instructions (200)")
    ap.add_argument("--cold", action="store_true",
                    help="empty the engine's memo before every request")
    ap.add_argument("--profile", choices=list(CASES), help="profile one case instead")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under callgrind instead of timing")
    ap.add_argument("--case", action="append", choices=list(CASES), help="only these cases")
    ap.add_argument("--callgrind-child", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--library", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    names = a.case or list(CASES)
    if a.callgrind_child:
        return under_callgrind(a.callgrind_child, a.iterations, a.library, a.cold)
    if a.instructions:
        return count_instructions(a.iterations or 200, names, a.cold)
    iterations = a.iterations or 2000
    started = time.perf_counter()
    engine = Engine()
    print(f"engine: {len(engine.rules)} rules ready in {time.perf_counter() - started:.2f} s;"
          f" detectors: {', '.join(sorted(engine.detectors)) or 'none'}")
    policy = SitePolicy(uuid.uuid4())
    if a.profile:
        todo = inputs(a.profile, iterations)
        profiler = cProfile.Profile()
        for method, target, headers, body in todo:
            if a.cold:
                engine.forget()
            profiler.enable()
            engine.inspect(Request(method, target, headers, body), policy)
            profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(24)
        return 0
    print(f"{'request':24} {'body':>7} {'best us':>9} {'median us':>10}  (median per request,"
          f" {a.rounds} rounds x {iterations}{', memo emptied before each' if a.cold else ''})")
    for name in names:
        measure(engine, policy, inputs(name, 200, offset=10**6), a.cold)  # warm up
        rounds = []
        for round_number in range(a.rounds):
            todo = inputs(name, iterations, offset=round_number * iterations)
            rounds.append(measure(engine, policy, todo, a.cold))
        size = len(CASES[name](0)[3])
        print(f"{name:24} {size:7} {min(rounds):9.1f} {statistics.median(rounds):10.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
