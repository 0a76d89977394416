"""
Server-side TLS contexts for the edge: one L{SSL.Context} per certificate.

Policy (DESIGN section 4, Mozilla "intermediate"):

  - TLS 1.2 and 1.3 only.
  - TLS 1.3 suites: C{TLS_AES_128_GCM_SHA256}, C{TLS_AES_256_GCM_SHA384},
    C{TLS_CHACHA20_POLY1305_SHA256}.
  - TLS 1.2 ciphers: the ECDHE AEAD suites of the Mozilla list
    (L{TLS12_CIPHERS}).  Mozilla's two C{DHE-RSA-*} suites are left out:
    pyOpenSSL can only load DH parameters from a file (C{load_tmp_dh}) and
    has no C{SSL_CTX_set_dh_auto}, and every client that lacks ECDHE is far
    older than anything that speaks TLS 1.2 with AES-GCM anyway.
  - The server's order decides, AES-128-GCM first, except that a client
    listing ChaCha20 first gets ChaCha20 (C{SSL_OP_PRIORITIZE_CHACHA}): that
    is a client without AES instructions, for which ChaCha20 is the fast
    choice.  Every suite offered is strong, so this only chooses speed:
    clients built on OpenSSL list AES-256-GCM first, which costs about 3%
    more per request than AES-128-GCM (docs/performance.md).  Mozilla's
    intermediate profile leaves the choice to the client; Go's TLS server,
    which Caddy uses, orders suites this way.
  - Key exchange groups: X25519, P-256 and P-384 (L{GROUPS}), in that
    order, as Mozilla's intermediate profile says; OpenSSL's defaults would
    add X448, P-521, the finite-field groups and the hybrid ML-KEM ones.
    pyOpenSSL has no call for it, so it is set through the OpenSSL
    binding pyOpenSSL itself uses (C{SSL_CTX_set1_curves_list}, the old
    name of C{set1_groups_list}).
  - No compression, no renegotiation.
  - ALPN: C{http/1.1} when the client offers it, otherwise no ALPN at all
    (C{h2} is not served yet).

Session resumption works within a process.  Each context has its own
session cache (server mode, session id context derived from the leaf) and
TLS session tickets.  OpenSSL gives each C{SSL_CTX} random ticket keys and
pyOpenSSL has no API to set them, so a ticket is only good on the context
that issued it: keep one context per certificate for as long as the
certificate is served (L{veil.edge.certs} caches them) and expect no
resumption across processes or nodes.  The ticket keys live as long as the
context; pass C{tickets=False} to use only the stateful session cache.

Building a context is synchronous and cheap (parsing PEM, no key
generation); the objects here are meant to be built once and reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from veil.edge.keys import CertInfo, load_chain, load_key
from veil.errors import CertificateError

#: The TLS 1.2 cipher list: Mozilla "intermediate" without the DHE suites.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: The TLS 1.3 cipher suites, in the server's order of preference.
TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"

#: C{SSL_OP_PRIORITIZE_CHACHA} (OpenSSL 1.1.1 and later), which pyOpenSSL
#: does not name: with the server's order in force, a client that lists
#: ChaCha20 first (hardware without AES instructions) still gets it.
OP_PRIORITIZE_CHACHA = 0x00200000

#: The key exchange groups, in the server's order of preference.
GROUPS = "X25519:P-256:P-384"

#: The protocol served to ordinary clients.
HTTP11 = b"http/1.1"

#: The ALPN protocol of the tls-alpn-01 challenge (RFC 8737).
ACME_TLS_1 = b"acme-tls/1"

#: How long a cached session may be resumed, in seconds.
DEFAULT_SESSION_TIMEOUT = 3600


def select_only(protocol: bytes) -> Callable[[SSL.Connection, list[bytes]], object]:
    """
    An ALPN select callback that picks C{protocol} if the client offers it
    and otherwise completes the handshake without ALPN.
    """

    def select(conn: SSL.Connection, offered: list[bytes]) -> object:
        if protocol in offered:
            return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen(eq=False)
class ServerTLS:
    """
    A ready server context for one certificate, usable as the connection
    creator of a server-side L{twisted.protocols.tls.TLSMemoryBIOFactory}.

    @ivar context: the configured context; do not change it (OpenSSL
        forbids most changes once a connection has used it).
    @ivar info: what the leaf certificate says (names, validity, ...).
    """

    context: SSL.Context
    info: CertInfo

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        Make a server connection on memory BIOs for C{tlsProtocol}.
        """
        return SSL.Connection(self.context, None)


def _build(
    chain_pem: bytes,
    key_pem: bytes,
    alpn: bytes,
    session_timeout: int | None,
    tickets: bool,
) -> ServerTLS:
    chain = load_chain(chain_pem)
    key = load_key(key_pem)
    leaf = chain[0]
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    options = (SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
               | SSL.OP_CIPHER_SERVER_PREFERENCE | OP_PRIORITIZE_CHACHA)
    if not tickets:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)

    if _lib.SSL_CTX_set1_curves_list(ctx._context, GROUPS.encode("ascii")) != 1:
        _lib.ERR_clear_error()
        raise CertificateError(f"this OpenSSL refuses the key exchange groups {GROUPS}")
    # Idle connections give their buffers back: the edge holds many.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        ctx.use_certificate(leaf)
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise CertificateError(f"certificate and key do not fit together: {e}") from None
    fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
    ctx.set_session_id(fingerprint)  # at most 32 bytes: exactly a SHA-256
    if session_timeout is None:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    else:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(session_timeout)
    ctx.set_alpn_select_callback(select_only(alpn))
    return ServerTLS(context=ctx, info=CertInfo.from_certificate(leaf))


def build_server_tls(
    chain_pem: bytes,
    key_pem: bytes,
    *,
    session_timeout: int = DEFAULT_SESSION_TIMEOUT,
    tickets: bool = True,
) -> ServerTLS:
    """
    Build the context that serves one certificate to ordinary clients.

    @param chain_pem: the leaf then its intermediates, PEM; all are sent.
    @param key_pem: the leaf's private key, PEM.
    @param session_timeout: seconds a session may be resumed.
    @param tickets: issue session tickets (on by default; see the module
        docstring about ticket keys).
    @raise CertificateError: if the chain or key cannot be parsed or the key
        does not belong to the leaf.
    """
    return _build(chain_pem, key_pem, HTTP11, session_timeout, tickets)


def build_challenge_tls(cert_pem: bytes, key_pem: bytes) -> ServerTLS:
    """
    Build the context that answers a tls-alpn-01 challenge (RFC 8737).

    The certificate is the self-signed one carrying the C{acmeIdentifier}
    extension.  ALPN selects C{acme-tls/1} when the client offers it and
    nothing otherwise.  There is no session resumption.  A client that
    sends no ALPN extension at all is never asked, so the edge must route
    only hellos offering C{acme-tls/1} (and nothing else) to this context,
    and close after the handshake.

    @raise CertificateError: as for L{build_server_tls}.
    """
    return _build(cert_pem, key_pem, ACME_TLS_1, session_timeout=None, tickets=False)

