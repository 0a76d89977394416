"""
What the server's side of one full TLS 1.3 handshake costs in OpenSSL, with
Veil's own server context, and nothing else: no sockets, no reactor, no
proxy.  This is the floor under Veil's S2 figure (a new connection per
request): whatever the rest of Veil costs comes on top of it.

    PYTHONPATH=. taskset -c 0 .venv/bin/python bench/veil/handshake.py CHAIN.pem KEY.pem [COUNT]

(for example the bench certificates in /tmp/veil-bench/certs: ecdsa.chain.crt
and ecdsa.key, or rsa.chain.crt and rsa.key).  The client is the standard
library's C{ssl} module on memory BIOs; only the server's calls are timed:
the first flight (ClientHello in, ServerHello to Finished out: key exchange,
signature, key schedule) and the second (client Finished in, session tickets
out), with tickets as Veil issues them and without.  Pinned to one core
as above; the machine's other load moves the times, not the work.
"""

import ssl
import sys
import time
from pathlib import Path

from OpenSSL import SSL

from veil.edge.contexts import build_server_tls


def _server_step(server: SSL.Connection, data: bytes) -> tuple[float, bytes]:
    server.bio_write(data)
    began = time.perf_counter()
    try:
        server.do_handshake()
    except SSL.WantReadError:
        pass
    try:
        out = server.bio_read(1 << 20)
    except SSL.WantReadError:
        out = b""
    return time.perf_counter() - began, out


def measure(context: SSL.Context, ca: Path, count: int) -> tuple[float, float, str]:
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(str(ca))
    first = second = 0.0
    suite = ""
    for _ in range(count):
        server = SSL.Connection(context, None)
        server.set_accept_state()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_context.wrap_bio(incoming, outgoing, server_hostname="www.bench.test")
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        spent, reply = _server_step(server, outgoing.read())
        first += spent
        incoming.write(reply)
        client.do_handshake()
        spent, _ = _server_step(server, outgoing.read())
        second += spent
        suite = f"{server.get_protocol_version_name()} {server.get_cipher_name()}"
    return first / count * 1e6, second / count * 1e6, suite


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    chain, key = Path(argv[1]), Path(argv[2])
    count = int(argv[3]) if len(argv) == 4 else 500
    ca = chain.with_name("ca.crt")
    for tickets in (True, False):
        tls = build_server_tls(chain.read_bytes(), key.read_bytes(), tickets=tickets)
        measure(tls.context, ca, 20)  # warm-up
        first, second, suite = measure(tls.context, ca, count)
        print(f"tickets {'on ' if tickets else 'off'}: first flight {first:.0f} us, "
              f"second {second:.0f} us, total {first + second:.0f} us ({suite})")


if __name__ == "__main__":
    main(sys.argv)
