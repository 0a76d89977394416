#!/usr/bin/env python3
"""
The proxy's keep-alive GET path in one process, without sockets: CPU per
request of Veil's own code (parsing, routing, the origin pool, header
rewriting, the log row), for comparing two versions of it.

A client connection and an origin connection run over in-memory transports
(the origin connection's unread-bytes check gets a real, quiet socket);
each iteration feeds one request to the client side and one response to
the origin side.  Prints the best of --repeat runs, in microseconds per
request.  Run it against another tree with PYTHONPATH=that/tree.

    bench/proxy/hotpath.py --requests 100000 --repeat 5

Wall time on a shared machine moves a lot; for a figure that does not,
count instructions: run it under C{valgrind --tool=callgrind} for two
request counts (with C{PYTHONHASHSEED=0}) and divide the difference.
"""

from __future__ import annotations

import argparse
import gc
import socket
import time
import uuid

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from veil.metrics import Registry
from veil.proxy import upstream
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginConnection, OriginPool
from veil.store.sites import Site

REQUEST = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench/1.0\r\n"
           b"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, br\r\n"
           b"Accept-Language: en-GB,en;q=0.9\r\nCookie: session=abcdef0123456789\r\n\r\n")
BODY = b"x" * 512
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
            b"Cache-Control: max-age=60\r\nDate: Fri, 04 Dec 2026 12:00:00 GMT\r\n\r\n%s"
            % (len(BODY), BODY))


def setup() -> tuple:
    clock = MemoryReactorClock()
    pool = OriginPool(clock)
    site = Site(uuid.uuid4(), "app.test", "http://192.0.2.10:80", "live", "block", 1, False,
                False, True)
    rows: list = []
    factory = ProxyFactory(clock, {"app.test": site}.get, pool, rows.append, Registry(),
                           scheme="http")
    client = factory.buildProtocol(None)
    client_transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    client.makeConnection(client_transport)
    key = pool.key_for(site.upstream, True, "app.test")
    try:
        slot = upstream._Slot(None, None)
    except TypeError:  # an older pool: no factory per slot
        slot = upstream._Slot(None)
    pool._slots[key] = slot
    conn = OriginConnection(pool, key)
    origin_transport = StringTransport()
    conn.makeConnection(origin_transport)
    quiet, _ = socket.socketpair()
    conn._fd = quiet.fileno()  # unused by a pool without the check
    slot.count = 1
    pool.release(conn, True)
    return client, client_transport, conn, origin_transport, rows, quiet


def run(requests: int) -> float:
    client, client_transport, conn, origin_transport, rows, _quiet = setup()
    feed, answer = client.dataReceived, conn.dataReceived
    feed(REQUEST)
    answer(RESPONSE)
    sent, got = origin_transport.value(), client_transport.value()
    assert sent.startswith(b"GET /index.html?q=1 HTTP/1.1\r\n"), sent[:100]
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(BODY), got[:100]
    client_transport.clear()
    origin_transport.clear()
    gc.collect()
    gc.disable()  # its passes come with allocations, not with this code: leave them out
    started = time.process_time()
    for _ in range(requests):
        feed(REQUEST)
        answer(RESPONSE)
        client_transport.clear()
        origin_transport.clear()
        if len(rows) > 1000:
            rows.clear()
    elapsed = time.process_time() - started
    gc.enable()
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = [run(args.requests) for _ in range(args.repeat)]
    print(f"{min(results):.2f} us/request (best of {args.repeat}; all: "
          f"{', '.join(f'{r:.2f}' for r in results)})")


if __name__ == "__main__":
    main()
