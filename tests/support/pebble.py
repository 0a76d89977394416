"""
Pebble (the ACME test CA) and pebble-challtestsrv (its fake DNS) for tests.

Each call to L{pebble_for} starts a fresh pair of processes (about 0.3 s) in
the test's temporary directory and stops them in a cleanup:

    pebble = await pebble_for(self, http_port=web.getHost().port,
                              tls_port=tls.getHost().port)
    client = AcmeClient(pebble.http, pebble.directory_url, key, reactor)

The fake DNS answers every A query with 127.0.0.1, so Pebble validates any
name against the C{http_port} / C{tls_port} the test serves challenges on.
Pebble's roots change on every start; verify issued chains against
L{Pebble.root_pem}.

Requires the Debian package C{pebble} (it ships both binaries); tests skip
when it is missing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import socket
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

PEBBLE = "pebble"
CHALLTESTSRV = "pebble-challtestsrv"
INSTALL_HINT = "Pebble is not installed: apt-get install pebble"

#: How long the processes may take to answer before the start counts as failed.
START_TIMEOUT = 15.0
#: How long a process may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 5.0
_POLL = 0.05


def require_pebble() -> None:
    """Skip the calling test unless both Pebble binaries are on C{PATH}."""
    if shutil.which(PEBBLE) is None or shutil.which(CHALLTESTSRV) is None:
        raise SkipTest(INSTALL_HINT)


def free_port(udp_too: bool = False) -> int:
    """
    A port on 127.0.0.1 that is free right now, for a server that must be
    told its port before it binds (Pebble validates challenges on it).

    The port is drawn at random below the kernel's ephemeral range
    (C{net.ipv4.ip_local_port_range}), so that no outgoing connection (of
    this test run or any other process) can take it between this check and
    the bind: asking the kernel for port 0 would hand out an ephemeral port
    that the next C{connect()} anywhere on the machine may reuse.

    With C{udp_too}, the port is also free for UDP (for a DNS server).
    """
    low, high = _UNSHARED_PORTS
    for _ in range(200):
        port = random.randint(low, high)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            if udp_too:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _unshared_ports() -> tuple[int, int]:
    """The ports below the ephemeral range, leaving the well-known ones out."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 10000, max(10001, ephemeral_low - 1)


_UNSHARED_PORTS = _unshared_ports()


def _write_wfe_certificate(directory: Path) -> tuple[Path, Path, bytes]:
    """
    Make a throwaway CA and, signed by it, the WFE's certificate for
    C{localhost} and C{127.0.0.1}.

    @return: (certificate path, key path, CA certificate PEM).
    """
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble WFE test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "wfe-cert.pem", directory / "wfe-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM)


class _Child(ProcessProtocol):
    """One spawned process: its output goes to a log file, the tail is kept."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._tail: deque[bytes] = deque(maxlen=30)
        self._partial = b""
        self._waiters: list[Deferred[None]] = []
        self.exited = False
        self.reason: Failure | None = None
        self.transport: IProcessTransport | None = None

    def _received(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self._tail.extend(lines)

    outReceived = errReceived = _received

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.reason = reason
        self._log.close()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_exited(self) -> Deferred[None]:
        """A Deferred that fires once the process has exited (each call gets its own)."""
        if self.exited:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def tail(self) -> str:
        return b"\n".join([*self._tail, self._partial]).decode("utf-8", "replace")

    async def stop(self, clock: Any) -> None:
        if self.exited or self.transport is None:
            return
        exited = self.when_exited()
        try:
            self.transport.signalProcess("TERM")
        except Exception:  # already gone
            pass
        timer = clock.callLater(STOP_TIMEOUT, self._kill)
        await exited
        if timer.active():
            timer.cancel()

    def _kill(self) -> None:
        if not self.exited and self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass


async def _nothing() -> None:
    return None


@attrs.define(eq=False)
class Pebble:
    """
    A running Pebble and its fake DNS.

    @ivar directory_url: the ACME directory, C{https://127.0.0.1:<port>/dir}.
    @ivar management_url: the management API base URL (same WFE certificate).
    @ivar wfe_ca_pem: the CA that signed the WFE's certificate.
    @ivar http: an HTTP client whose agent trusts only C{wfe_ca_pem}.
    @ivar root_pem: Pebble's issuing root for this run (from /roots/0).
    @ivar intermediate_pem: Pebble's intermediate (from /intermediates/0).
    @ivar http_port: where Pebble's VA sends http-01 requests.
    @ivar tls_port: where Pebble's VA connects for tls-alpn-01.
    @ivar workdir: configuration, certificates and the two processes' logs.
    """

    directory_url: str
    management_url: str
    wfe_ca_pem: bytes
    http: HTTPClient
    http_port: int
    tls_port: int
    workdir: Path
    _reactor: Any
    _pool: HTTPConnectionPool
    _children: list[_Child]
    root_pem: bytes = b""
    intermediate_pem: bytes = b""

    @property
    def roots_pem(self) -> bytes:
        """The root and intermediate together, PEM."""
        return self.root_pem + self.intermediate_pem

    def full_log(self, name: str = "pebble") -> str:
        """Everything the process C{name} has written so far."""
        for child in self._children:
            if child.name == name:
                child._log.flush()
                return child.log_path.read_text("utf-8", "replace")
        raise KeyError(name)

    def logs(self) -> str:
        """The last lines each process wrote, for failure messages."""
        return "\n".join(f"--- {c.name} ({c.log_path}) ---\n{c.tail()}"
                         for c in self._children)

    def stop(self) -> Deferred[None]:
        """Stop both processes; the Deferred fires once both have exited."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await DeferredList(
            [Deferred.fromCoroutine(c.stop(self._reactor)) for c in self._children],
            consumeErrors=True)
        await self._pool.closeCachedConnections()


def _spawn(reactor: Any, name: str, args: list[str], env: Mapping[str, str],
           workdir: Path) -> _Child:
    child = _Child(name, workdir / f"{name}.log")
    executable = shutil.which(args[0])
    assert executable is not None
    reactor.spawnProcess(child, executable, args, env=dict(env), path=str(workdir))
    return child


async def _wait_ready(reactor: Any, http: HTTPClient, url: str, children: list[_Child],
                      accept: set[int]) -> None:
    deadline = reactor.seconds() + START_TIMEOUT
    last = "no attempt"
    while True:
        for c in children:
            if c.exited:
                error = _PortTaken if "address already in use" in c.tail() else RuntimeError
                raise error(
                    f"{c.name} exited during start-up ({c.reason.value if c.reason else '?'})"
                    f":\n{c.tail()}")
        try:
            d = http.get(url, allow_redirects=False)
            d.addTimeout(2.0, reactor)
            response = await d
            await response.content()
            if response.code in accept:
                return
            last = f"HTTP {response.code}"
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if reactor.seconds() > deadline:
            tails = "\n".join(f"--- {c.name} ---\n{c.tail()}" for c in children)
            raise RuntimeError(f"{url} not ready after {START_TIMEOUT:g} s ({last}):\n{tails}")
        await deferLater(reactor, _POLL, lambda: None)


async def start_pebble(
    reactor: Any,
    workdir: Path,
    *,
    http_port: int | None = None,
    tls_port: int | None = None,
    nonce_reject: int = 0,
    validity: int = 3600,
    eab_keys: Mapping[str, str] | None = None,
    always_valid: bool = False,
) -> Pebble:
    """
    Start pebble-challtestsrv and Pebble and wait until both answer.

    @param workdir: an empty directory for configuration and logs.
    @param http_port: the port Pebble's VA uses for http-01 (default: a free one).
    @param tls_port: the port Pebble's VA uses for tls-alpn-01 (default: a free one).
    @param nonce_reject: percentage of good nonces Pebble rejects as C{badNonce}.
    @param validity: lifetime of issued certificates, in seconds.
    @param eab_keys: if given, external account binding is required and these
        C{{kid: base64url HMAC key}} are accepted.
    @param always_valid: Pebble skips validation and marks every challenge valid.
    """
    require_pebble()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, wfe_ca_pem = _write_wfe_certificate(workdir)
    options = dict(http_port=http_port, tls_port=tls_port, nonce_reject=nonce_reject,
                   validity=validity, eab_keys=eab_keys, always_valid=always_valid)
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            return await _start_once(reactor, workdir, cert_path, key_path, wfe_ca_pem,
                                     **options)
        except _PortTaken:
            # Another process took one of the ports we picked; pick again.
            if attempt == _START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class _PortTaken(RuntimeError):
    """A process could not bind a port picked for it."""


_START_ATTEMPTS = 3


async def _start_once(
    reactor: Any, workdir: Path, cert_path: Path, key_path: Path, wfe_ca_pem: bytes, *,
    http_port: int | None, tls_port: int | None, nonce_reject: int, validity: int,
    eab_keys: Mapping[str, str] | None, always_valid: bool,
) -> Pebble:
    wfe, management = free_port(), free_port()
    dns, dns_management = free_port(udp_too=True), free_port()
    config: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{wfe}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port if http_port is not None else free_port(),
        "tlsPort": tls_port if tls_port is not None else free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab_keys is not None,
        "certificateValidityPeriod": validity,
    }
    if eab_keys is not None:
        config["externalAccountMACKeys"] = dict(eab_keys)
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": config}, indent=2))

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    pebble_env = {
        **base_env,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
        "PEBBLE_AUTHZREUSE": "0",
    }
    if always_valid:
        pebble_env["PEBBLE_VA_ALWAYS_VALID"] = "1"

    children = [
        _spawn(reactor, CHALLTESTSRV, [
            CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{dns_management}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
        ], base_env, workdir),
        _spawn(reactor, PEBBLE, [
            PEBBLE, "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns}",
        ], pebble_env, workdir),
    ]
    pool = HTTPConnectionPool(reactor, persistent=True)
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(wfe_ca_pem))
    http = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    pebble = Pebble(
        directory_url=f"https://127.0.0.1:{wfe}/dir",
        management_url=f"https://127.0.0.1:{management}",
        wfe_ca_pem=wfe_ca_pem,
        http=http,
        http_port=config["httpPort"],
        tls_port=config["tlsPort"],
        workdir=workdir,
        reactor=reactor,
        pool=pool,
        children=children,
    )
    try:
        plain = HTTPClient(Agent(reactor, pool=pool))
        await _wait_ready(reactor, plain, f"http://127.0.0.1:{dns_management}/",
                          children, accept=set(range(200, 500)))
        await _wait_ready(reactor, http, pebble.directory_url, children, accept={200})
        pebble.root_pem = await _fetch(reactor, http, f"{pebble.management_url}/roots/0")
        pebble.intermediate_pem = await _fetch(
            reactor, http, f"{pebble.management_url}/intermediates/0")
    except BaseException:
        await pebble.stop()
        raise
    return pebble


async def _fetch(reactor: Any, http: HTTPClient, url: str) -> bytes:
    d = http.get(url)
    d.addTimeout(5.0, reactor)
    response = await d
    body = await response.content()
    if response.code != 200:
        raise RuntimeError(f"GET {url}: HTTP {response.code}")
    return body


def pebble_for(testcase: TestCase, reactor: Any = _global_reactor,
               **options: Any) -> Deferred[Pebble]:
    """
    Start Pebble for one test and stop it in the test's cleanup.

    Options are those of L{start_pebble}. Skips the test if Pebble is not installed.
    """
    require_pebble()
    workdir = Path(testcase.mktemp()).resolve()

    async def start() -> Pebble:
        pebble = await start_pebble(reactor, workdir, **options)
        testcase.addCleanup(pebble.stop)
        return pebble

    return Deferred.fromCoroutine(start())
