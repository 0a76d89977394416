"""
A bare Twisted TLS server: scenario B's reference row for Veil.

It uses Veil's own server context (L{veil.edge.contexts.build_server_tls}: same
protocol versions, suites, options, session cache and tickets) on Twisted's
L{TLSMemoryBIOFactory}, with an application protocol that does nothing.  What
it leaves out is what Veil's edge adds per connection: reading the ClientHello
itself, choosing the certificate, replaying the hello into TLS, the IP-decision
stage and the application router.  So Veil's rate beside this one shows what
that costs, with the same Python, Twisted and OpenSSL.

usage: bare_tls.py PORT CHAIN.pem KEY.pem   (run with Veil on PYTHONPATH; SIGTERM stops it)
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from veil.edge.contexts import build_server_tls


class Nothing(Protocol):
    """Inside TLS: nothing.  A close_notify from the client is answered by the TLS
    layer with close_notify, then the connection is closed."""


def main() -> None:
    port, chain, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    with open(chain, "rb") as c, open(key, "rb") as k:
        creator = build_server_tls(c.read(), k.read())
    factory = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Nothing))
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    print(f"bare TLS on 127.0.0.1:{port} with {type(reactor).__name__}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
