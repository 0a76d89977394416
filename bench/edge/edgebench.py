"""
edgebench: Veil's TLS edge against Caddy and nginx, on one pinned core.

Run it through bench/edge/run.sh, which installs what is missing, makes the bench
certificates and builds the Go client (hsbench.go) first.  See bench/README.md.

Scenarios:
  A  time to first handshake for a new name, with certificates ordered from Pebble
     at the handshake (Veil tls.mode=acme; Caddy on_demand), then the second
     (cached) handshake for the same names;
  B  full TLS 1.3 handshakes per second for one cached name (no resumption,
     X25519), ECDSA P-256 and RSA-2048 certificates (Veil internal CA; nginx
     with the bench certificates);
  C  memory per idle TLS connection (RSS before/after 2,000 idle connections).

Layout: the server under test on CPU 0 (taskset; Veil's embedded PostgreSQL is
its child and runs there too); the client, Pebble and pebble-challtestsrv on
CPU 1.  All traffic on 127.0.0.1.  Every process started here is stopped by its
PID (and recorded in $BENCH_TMP/edge/pids, so that run.sh's trap can stop what
a killed harness left behind).  Every load run stops by itself within 10 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TMP = Path(os.environ.get("BENCH_TMP", "/tmp/veil-bench"))
WORK = TMP / "edge"
CERTS = TMP / "certs"
HSBENCH = TMP / "bin" / "hsbench"
PIDS = WORK / "pids"
TWISTD = Path(sys.executable).parent / "twistd"

SERVER_CPU, LOAD_CPU = "0", "1"
# 185xx: clear of the shared harness's 18443 / 18080, in case both run on the machine.
TLS_PORT, HTTP_PORT, DASH_PORT, ASK_PORT, ORIGIN_PORT = 18543, 18581, 18582, 18583, 18584
PEBBLE_PORT, PEBBLE_MGMT, DNS_PORT, DNS_MGMT = 18514, 18515, 18553, 18555
HOST = "www.bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_PCT = 5.0       # other processes above this (% of a core): wait before a run
DISTURBED_PCT = 8.0   # ... above this during a run: the run is repeated
TRIES = 6
SOURCE = {"path": REPO, "commit": None, "how": "live"}   # set by main()

KEYS = {  # our name -> (Veil tls.key_type, Caddy key_type, bench cert basename)
    "ecdsa": ("ecdsa-p256", "p256", "ecdsa"),
    "rsa": ("rsa-2048", "rsa2048", "rsa"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------
# /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def all_ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields:
                out[int(name)] = int(fields[1])
    return out


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in all_ppids().items():
        children.setdefault(ppid, []).append(pid)
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def tree_cpu_ticks(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total


def server_pids(root: int) -> list[int]:
    """The server's process tree without PostgreSQL (Veil's embedded database)."""
    out = []
    for pid in tree_pids(root):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "postgres":
            out.append(pid)
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_busy() -> dict[str, int]:
    """{cpu index: busy ticks} (everything but idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[m.group(1)] = sum(v) - v[3] - v[4]
    return out


def foreign_ticks() -> dict[int, int]:
    """CPU ticks of every process that is neither ours (this harness and its
    descendants) nor a kernel thread."""
    ppid, ticks = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields:
            ppid[int(name)] = int(fields[1])
            ticks[int(name)] = int(fields[11]) + int(fields[12])
    me = os.getpid()

    def ours(pid: int) -> bool:
        for _ in range(64):
            if pid == me:
                return True
            if pid <= 2:
                return pid == 2
            pid = ppid.get(pid, 0)
        return False

    return {pid: t for pid, t in ticks.items() if pid != 2 and not ours(pid)}


def foreign_delta(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(t - before.get(pid, 0) for pid, t in after.items())


def wait_quiet(limit: float = 120.0) -> float:
    """Wait until other processes use < QUIET_PCT of a core; return the last load."""
    end = time.monotonic() + limit
    said = False
    while True:
        before = foreign_ticks()
        time.sleep(1.0)
        load = 100.0 * foreign_delta(before, foreign_ticks()) / CLK_TCK
        if load < QUIET_PCT:
            return load
        if time.monotonic() > end:
            log(f"   warning: other processes still use {load:.0f}% of a core; going on")
            return load
        if not said:
            log(f"   waiting: other processes use {load:.0f}% of a core")
            said = True
        time.sleep(2.0)


class Accounting:
    """CPU 0 / CPU 1 busy shares, the server tree's CPU and foreign CPU over a span."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.busy0 = cpu_busy()
        self.foreign0 = foreign_ticks()
        self.tree0 = tree_cpu_ticks(server_pid) if server_pid else 0

    def done(self) -> dict:
        wall = time.monotonic() - self.t0
        busy1 = cpu_busy()
        pct = lambda ticks: round(100.0 * ticks / CLK_TCK / wall, 1)  # noqa: E731
        out = {
            "wall_s": round(wall, 3),
            "cpu0_busy_pct": pct(busy1[SERVER_CPU] - self.busy0[SERVER_CPU]),
            "cpu1_busy_pct": pct(busy1[LOAD_CPU] - self.busy0[LOAD_CPU]),
            "foreign_cpu_pct": pct(foreign_delta(self.foreign0, foreign_ticks())),
        }
        if self.pid:
            out["server_cpu_pct"] = pct(tree_cpu_ticks(self.pid) - self.tree0)
        return out


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (server side)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


# ----------------------------------------------------------------------------
# processes


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


class Proc:
    """A process pinned to one CPU; stopped by its PID (then its leftover children)."""

    running: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], cpu: str, env: dict, cwd: Path,
                 logpath: Path) -> None:
        self.name = name
        self.logpath = logpath
        self._log = open(logpath, "ab")
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpu, *argv], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid      # taskset execs the program: this is its PID
        with open(PIDS, "a") as f:
            f.write(f"{self.pid} {_start_time(self.pid)} {name}\n")
        Proc.running.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        family = tree_pids(self.pid)
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"   {self.name} ignored SIGTERM for {grace:g} s: SIGKILL")
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        time.sleep(0.3)
        for pid in family[1:]:          # children that outlived their parent
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        if self in Proc.running:
            Proc.running.remove(self)
        if PIDS.exists():
            keep = [line for line in PIDS.read_text().splitlines()
                    if not line.startswith(f"{self.pid} ")]
            PIDS.write_text("".join(k + "\n" for k in keep))

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(list(cls.running)):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                log(f"   stopping {p.name}: {e!r}")


def wait_for(what: str, check, proc: Proc | None, timeout: float = 60.0):
    end = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
        try:
            value = check()
            if value:
                return value
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:g} s ({last!r})"
                       + (f":\n{proc.tail()}" if proc else ""))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def base_env() -> dict:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}


def render(template: Path, out: Path, values: dict) -> None:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError(f"{template}: unfilled {left}")
    out.write_text(text)


# ----------------------------------------------------------------------------
# servers under test


class Veil:
    def __init__(self, run: Path, env: dict, fresh: bool = True) -> None:
        if fresh and run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.data = run / "data"
        environ = base_env()
        environ.update({
            "PYTHONPATH": str(SOURCE["path"]), "VEIL_DATA_DIR": str(self.data),
            "VEIL_EDGE_PORT": str(TLS_PORT), "VEIL_HTTP_PORT": str(HTTP_PORT),
            "VEIL_DASHBOARD_PORT": str(DASH_PORT),
        })
        environ.update(env)
        self.proc = Proc("veil", [str(TWISTD), "--nodaemon", "--pidfile=", "veil"],
                         SERVER_CPU, environ, run, run / "veil.log")
        wait_for("Veil /ready", lambda: _http_ok(f"http://127.0.0.1:{DASH_PORT}/ready"),
                 self.proc, timeout=90)
        from veil.store.embedded import conninfo_for
        self.conninfo = conninfo_for(self.data)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def add_sites(self, names: list[str], upstream: str = "http://127.0.0.1:9") -> None:
        """Insert an owner and active sites, as tests/integration/test_edge.py does."""
        import psycopg
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            owner = conn.execute("INSERT INTO users (email) VALUES (%s) RETURNING id",
                                 (f"bench-{uuid.uuid4().hex[:8]}@example.com",)).fetchone()[0]
            for name in names:
                conn.execute("INSERT INTO sites (owner_id, domain, upstream, status)"
                             " VALUES (%s, %s, %s, 'active')", (owner, name, upstream))
        time.sleep(1.5)   # NOTIFY veil_sites reaches the site table

    def issue_times(self) -> dict[str, float]:
        """{name: seconds} from Veil's "Issued certificate for X (new) in N s" lines."""
        text = self.proc.logpath.read_text(errors="replace")
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r"Issued certificate for (\S+) \(new\) in ([\d.]+) s", text)}

    def stop(self) -> None:
        self.proc.stop()


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


class Nginx:
    def __init__(self, run: Path, key: str) -> None:
        if run.exists():
            shutil.rmtree(run)
        (run / "tmp").mkdir(parents=True)
        base = KEYS[key][2]
        render(HERE / "nginx.conf", run / "nginx.conf", {
            "RUN": run, "PORT": TLS_PORT, "CERT": CERTS / f"{base}.chain.crt",
            "KEY": CERTS / f"{base}.key", "ORIGIN_PORT": ORIGIN_PORT})
        self.proc = Proc("nginx", ["nginx", "-p", str(run), "-e", str(run / "error.log"),
                                   "-c", str(run / "nginx.conf")],
                         SERVER_CPU, base_env(), run, run / "nginx.out")
        wait_for("nginx", lambda: not port_free(TLS_PORT), self.proc, timeout=15)
        time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


class BareTLS:
    """bare_tls.py: Veil's TLS context on Twisted's TLSMemoryBIOFactory, nothing else."""

    def __init__(self, run: Path, key: str) -> None:
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        base = KEYS[key][2]
        env = dict(base_env(), PYTHONPATH=str(SOURCE["path"]))
        self.proc = Proc("bare-tls", [sys.executable, str(HERE / "bare_tls.py"), str(TLS_PORT),
                                      str(CERTS / f"{base}.chain.crt"),
                                      str(CERTS / f"{base}.key")],
                         SERVER_CPU, env, run, run / "bare.log")
        wait_for("bare TLS", lambda: not port_free(TLS_PORT), self.proc, timeout=15)
        time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


class Origin:
    """The sites' origin for B and C: nginx, one worker, on LOAD_CPU (as the shared
    harness's origin), answering every GET with 200 and a 1 KiB body."""

    def __init__(self, run: Path) -> None:
        if run.exists():
            shutil.rmtree(run)
        (run / "tmp").mkdir(parents=True)
        render(HERE / "origin.conf", run / "origin.conf", {"RUN": run, "PORT": ORIGIN_PORT})
        self.proc = Proc("origin", ["nginx", "-p", str(run), "-e", str(run / "error.log"),
                                    "-c", str(run / "origin.conf")],
                         LOAD_CPU, base_env(), run, run / "origin.out")
        wait_for("origin", lambda: _http_ok(f"http://127.0.0.1:{ORIGIN_PORT}/"), self.proc,
                 timeout=15)
        self.url = f"http://127.0.0.1:{ORIGIN_PORT}"

    def stop(self) -> None:
        self.proc.stop()


class Caddy:
    def __init__(self, run: Path, key: str, pebble: "Pebble", challenges: str) -> None:
        if run.exists():
            shutil.rmtree(run)
        (run / "home").mkdir(parents=True)
        render(HERE / "Caddyfile", run / "Caddyfile", {
            "RUN": run, "TLS_PORT": TLS_PORT, "HTTP_PORT": HTTP_PORT, "ASK_PORT": ASK_PORT,
            "ACME_DIR": pebble.directory_url, "ACME_ROOT": pebble.wfe_ca,
            "KEY_TYPE": KEYS[key][1],
            "CHALLENGES": {"default": "", "tls-alpn-01": "disable_http_challenge",
                           "http-01": "disable_tlsalpn_challenge"}[challenges]})
        env = base_env()
        env.update({"HOME": str(run / "home"), "XDG_DATA_HOME": str(run / "home"),
                    "XDG_CONFIG_HOME": str(run / "home"), "GOMAXPROCS": "1"})
        self.proc = Proc("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config",
                                   str(run / "Caddyfile")],
                         SERVER_CPU, env, run, run / "caddy.out")
        self.log = run / "caddy.jsonl"
        wait_for("Caddy ask endpoint", lambda: _http_ok(f"http://127.0.0.1:{ASK_PORT}/ask"),
                 self.proc, timeout=30)
        wait_for("Caddy TLS port", lambda: not port_free(TLS_PORT), self.proc, timeout=15)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.stop()


# ----------------------------------------------------------------------------
# Pebble


class Pebble:
    """Pebble and pebble-challtestsrv (every name resolves to 127.0.0.1), on LOAD_CPU."""

    def __init__(self, run: Path) -> None:
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        self.run = run
        self.wfe_ca = run / "wfe-ca.pem"
        cert, key = self._wfe_cert()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{PEBBLE_PORT}",
            "managementListenAddress": f"127.0.0.1:{PEBBLE_MGMT}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": HTTP_PORT, "tlsPort": TLS_PORT,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "certificateValidityPeriod": 7776000,
        }}
        (run / "pebble-config.json").write_text(json.dumps(config, indent=1))
        env = base_env()
        self.dns = Proc("pebble-challtestsrv", [
            "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{DNS_PORT}", "-management", f"127.0.0.1:{DNS_MGMT}",
            "-http01", "", "-https01", "", "-tlsalpn01", ""],
            LOAD_CPU, env, run, run / "challtestsrv.log")
        env = dict(env, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        self.pebble = Proc("pebble", ["pebble", "-config", str(run / "pebble-config.json"),
                                      "-dnsserver", f"127.0.0.1:{DNS_PORT}"],
                           LOAD_CPU, env, run, run / "pebble.log")
        self.directory_url = f"https://127.0.0.1:{PEBBLE_PORT}/dir"
        ctx = ssl.create_default_context(cafile=str(self.wfe_ca))
        self._ctx = ctx
        wait_for("Pebble", lambda: self._get(self.directory_url), self.pebble, timeout=30)
        self.root = run / "pebble-root.pem"
        self.root.write_bytes(self._get(f"https://127.0.0.1:{PEBBLE_MGMT}/roots/0"))
        self.intermediate = self._get(f"https://127.0.0.1:{PEBBLE_MGMT}/intermediates/0")

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=3, context=self._ctx) as r:
            return r.read()

    def _wfe_cert(self) -> tuple[Path, Path]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench pebble WFE CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(hours=1))
              .not_valid_after(now + dt.timedelta(days=7))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                           False, False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.wfe_ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        cert_path, key_path = self.run / "wfe-cert.pem", self.run / "wfe-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def log_size(self) -> int:
        return self.pebble.logpath.stat().st_size

    def activity(self, since: int) -> dict:
        """Accounts, orders and validations (by challenge type) Pebble logged after
        byte offset `since`."""
        with open(self.pebble.logpath, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        kinds: dict[str, int] = {}
        # Pebble 2.4's VA logs "Pulled a task from the Tasks queue" once per
        # challenge it validates; for http-01 it then logs "Attempting to validate
        # w/ HTTP", for dns-01 a DNS line, and for tls-alpn-01 nothing of its own.
        # A's handshakes are sequential, so the tasks do not interleave.
        for segment in text.split("Pulled a task from the Tasks queue")[1:]:
            segment = segment.split("set VALID by completed challenge")[0]
            if "validate w/ HTTP" in segment:
                kind = "http-01"
            elif "DNS" in segment:
                kind = "dns-01"
            else:
                kind = "tls-alpn-01"
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"orders": text.count("POST /order-plz"), "validations": kinds,
                "accounts": text.count("POST /sign-me-up")}

    def stop(self) -> None:
        self.pebble.stop()
        self.dns.stop()


# ----------------------------------------------------------------------------
# clients


def hsbench(args: list[str], timeout: float) -> dict:
    cmd = ["timeout", str(int(timeout)), "taskset", "-c", LOAD_CPU, str(HSBENCH), *args]
    out = subprocess.run(cmd, env=dict(base_env(), GOMAXPROCS="1"), capture_output=True,
                         text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"hsbench {args[0]} failed (rc {out.returncode}): "
                           f"{(out.stdout + out.stderr)[-800:]}") from None


def warm_handshake(cafile: Path, name: str = HOST) -> dict:
    """One handshake with Python's ssl, verifying the chain and the name; returns
    what the served leaf is (key type, issuer, chain length)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    ctx = ssl.create_default_context(cafile=str(cafile))
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            ms = (time.monotonic() - t0) * 1000
            leaf = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
            key = leaf.public_key()
            if isinstance(key, ec.EllipticCurvePublicKey):
                kind = f"ECDSA {key.curve.name}"
            elif isinstance(key, rsa.RSAPublicKey):
                kind = f"RSA-{key.key_size}"
            else:
                kind = type(key).__name__
            return {"ms": round(ms, 1), "key": kind, "version": s.version(),
                    "issuer": leaf.issuer.rfc4514_string()}


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------
# scenario A: time to first handshake with an ACME CA


def scenario_a(opts, report: dict) -> None:
    log("A: time to first handshake for new names, certificates from Pebble")
    pebble = Pebble(WORK / "pebble")
    try:
        report["pebble"] = {"directory": pebble.directory_url}
        rows = [(server, key, "default") for key in opts.a_keys for server in ("veil", "caddy")]
        if opts.a_extra:
            # The same challenge type on both sides: Veil with http-01 only (what
            # certmagic picked by default), Caddy with tls-alpn-01 only.
            rows += [("veil", "ecdsa", "http-01"), ("caddy", "ecdsa", "tls-alpn-01")]
        for server, key, challenges in rows:
            report.setdefault("A", []).append(a_one(opts, pebble, server, key, challenges))
    finally:
        pebble.stop()


def a_one(opts, pebble: Pebble, server: str, key: str, challenges: str) -> dict:
    label = f"{server}-{key}" + ("" if challenges == "default" else "-" + challenges[:-3])
    log(f" A {label}")
    stamp = time.strftime("%H%M%S")
    names = [f"n{i:02d}-{stamp}.{label}.test" for i in range(1, opts.names + 1)]
    warm = f"warm-{stamp}.{label}.test"
    spare = [f"r{i:02d}-{stamp}.{label}.test" for i in range(1, 3 * opts.names + 1)]
    mark = pebble.log_size()
    if server == "veil":
        env = {"VEIL_TLS_MODE": "acme", "VEIL_TLS_KEY_TYPE": KEYS[key][0],
               "VEIL_ACME_DIRECTORY_URL": pebble.directory_url, "VEIL_ACME_AGREE_TOS": "true",
               "VEIL_ACME_EMAIL": "ops@example.com", "VEIL_ACME_CA_BUNDLE": str(pebble.wfe_ca)}
        if challenges != "default":
            env["VEIL_ACME_CHALLENGES"] = challenges
        srv = Veil(WORK / f"a-{label}", env)
        srv.add_sites([warm, *names, *spare])
    else:
        srv = Caddy(WORK / f"a-{label}", key, pebble, challenges)
    result: dict = {"server": server, "key": key, "challenges": challenges, "first": [],
                    "second": []}
    try:
        # The very first issuance also registers the ACME account: timed apart.
        wait_quiet()
        w = hsbench(["first", "-addr", f"127.0.0.1:{TLS_PORT}", "-names", warm, "-passes", "1",
                     "-cafile", str(pebble.root), "-timeout", "30s", "-gap", "0s"], 40)
        result["warm"] = w["handshakes"][0]
        log(f"   warm-up (account + first order): {w['handshakes'][0]['ms']:.0f} ms"
            f" {w['handshakes'][0].get('error', '')}")
        time.sleep(0.5)
        done = []
        for name in names:
            for attempt in range(TRIES):
                this = name if attempt == 0 else spare.pop(0)
                wait_quiet()
                acct = Accounting(srv.pid)
                h = hsbench(["first", "-addr", f"127.0.0.1:{TLS_PORT}", "-names", this,
                             "-passes", "1", "-cafile", str(pebble.root), "-timeout", "30s",
                             "-gap", "0s"], 40)["handshakes"][0]
                h.update(acct.done())
                h["disturbed"] = h["foreign_cpu_pct"] > DISTURBED_PCT
                if not h["disturbed"] or attempt == TRIES - 1:
                    break
                log(f"   {this}: disturbed ({h['foreign_cpu_pct']}% foreign CPU), new name")
                result.setdefault("discarded_disturbed", []).append(h)
            result["first"].append(h)
            done.append(h["name"])
            log(f"   first  {h['name']}: {h['ms']:.0f} ms ok={h['ok']} {h.get('key', '')}"
                f" {h.get('error', '')}")
            time.sleep(0.5)
        time.sleep(1.0)
        for name in done:
            wait_quiet()
            acct = Accounting(srv.pid)
            h = hsbench(["first", "-addr", f"127.0.0.1:{TLS_PORT}", "-names", name, "-passes",
                         "1", "-cafile", str(pebble.root), "-timeout", "30s", "-gap", "0s"],
                        40)["handshakes"][0]
            h.update(acct.done())
            result["second"].append(h)
        log(f"   second (cached): median "
            f"{med([h['ms'] for h in result['second'] if h['ok']]) or float('nan'):.1f} ms")
        if server == "veil":
            result["server_issue_s"] = srv.issue_times()
        else:
            result["challenges_caddy_log"] = caddy_challenges(srv.log)
    finally:
        srv.stop()
    result["pebble"] = pebble.activity(mark)
    ok = [h["ms"] for h in result["first"] if h["ok"]]
    result["summary"] = {
        "first_ok": len(ok), "first_n": len(result["first"]),
        "first_median_ms": med(ok), "first_min_ms": min(ok, default=None),
        "first_max_ms": max(ok, default=None),
        "second_median_ms": med([h["ms"] for h in result["second"] if h["ok"]]),
        "second_min_ms": min((h["ms"] for h in result["second"] if h["ok"]), default=None),
        "second_max_ms": max((h["ms"] for h in result["second"] if h["ok"]), default=None),
        "second_ok": sum(h["ok"] for h in result["second"]),
        "verified": all(h.get("verified") for h in result["first"] + result["second"] if h["ok"]),
        "same_cert": all(a.get("serial") == b.get("serial") for a, b in
                         zip(result["first"], result["second"])),
        "disturbed_kept": sum(bool(h.get("disturbed")) for h in result["first"]),
        "replaced_disturbed": len(result.get("discarded_disturbed", [])),
    }
    log(f"   summary: {result['summary']}  pebble: {result['pebble']}")
    return result


def caddy_challenges(path: Path) -> dict:
    """Challenge types certmagic tried, and per name the time from "obtaining new
    certificate" to "validations succeeded" and on to "certificate obtained"."""
    kinds: dict[str, int] = {}
    start: dict[str, float] = {}
    current = None
    phases: dict[str, list[float]] = {"to_validated_ms": [], "validated_to_obtained_ms": []}
    validated: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        msg = e.get("msg", "")
        if msg == "trying to solve challenge":
            kinds[e.get("challenge_type", "?")] = kinds.get(e.get("challenge_type", "?"), 0) + 1
        elif msg == "obtaining new certificate" and "server_name" in e:
            current = e["server_name"]
            start[current] = e["ts"]
        elif msg == "validations succeeded; finalizing order" and current in start:
            validated[current] = e["ts"]
            phases["to_validated_ms"].append(1000 * (e["ts"] - start[current]))
        elif msg == "certificate obtained successfully" and e.get("identifier") in validated:
            name = e["identifier"]
            phases["validated_to_obtained_ms"].append(1000 * (e["ts"] - validated[name]))
    return {"tried": kinds,
            **{k: round(med(v), 1) if v else None for k, v in phases.items()}}


# ----------------------------------------------------------------------------
# scenario B: full handshakes per second, cached name


def scenario_b(opts, report: dict) -> None:
    log("B: full handshakes per second for a cached name")
    origin = Origin(WORK / "origin")   # the site's upstream; B sends no request
    try:
        for key in opts.b_keys:
            for server in opts.b_servers:
                report.setdefault("B", []).append(b_one(opts, server, key))
    finally:
        origin.stop()


def start_cached(server: str, key: str, run: Path):
    """Veil (internal CA, site inserted, warmed) or nginx (bench certs), warmed."""
    if server == "veil":
        srv = Veil(run, {"VEIL_TLS_MODE": "internal", "VEIL_TLS_KEY_TYPE": KEYS[key][0]})
        srv.add_sites([HOST], upstream=f"http://127.0.0.1:{ORIGIN_PORT}")
        cafile = srv.data / "ca" / "ca.crt"
    elif server == "twisted":
        srv = BareTLS(run, key)
        cafile = CERTS / "ca.crt"
    else:
        srv = Nginx(run, key)
        cafile = CERTS / "ca.crt"
    warm = warm_handshake(cafile)
    return srv, warm


def b_one(opts, server: str, key: str) -> dict:
    label = f"{server}-{key}"
    log(f" B {label}")
    srv, warm = start_cached(server, key, WORK / f"b-{label}")
    result: dict = {"server": server, "key": key, "warm": warm, "runs": []}
    log(f"   warmed: {warm}")
    try:
        for r in range(opts.runs):
            for attempt in range(TRIES):
                wait_quiet()
                acct = Accounting(srv.pid)
                out = hsbench(["load", "-addr", f"127.0.0.1:{TLS_PORT}", "-sni", HOST,
                               "-c", str(opts.conns), "-d", f"{opts.duration}s"],
                              opts.duration + 5)
                out.update(acct.done())
                if not srv.proc.alive():
                    raise RuntimeError(f"{server} died during the run:\n{srv.proc.tail()}")
                out["disturbed"] = out["foreign_cpu_pct"] > DISTURBED_PCT
                if not out["disturbed"] or attempt == TRIES - 1:
                    break
                log(f"   run {r + 1}: disturbed ({out['foreign_cpu_pct']}% foreign CPU), again")
                result.setdefault("discarded_disturbed", []).append(out)
            result["runs"].append(out)
            log(f"   run {r + 1}: {out['handshakes_per_s']:.0f}/s  CPU0 {out['cpu0_busy_pct']}%"
                f" CPU1 {out['cpu1_busy_pct']}%  server {out['server_cpu_pct']}%"
                f"  errors {out['errors']} resumed {out['resumed']} closes {out['closes']}")
            time.sleep(1.0)
    finally:
        srv.stop()
    rates = [r["handshakes_per_s"] for r in result["runs"]]
    result["summary"] = {
        "median": med(rates), "min": min(rates), "max": max(rates),
        "cpu0_median": med([r["cpu0_busy_pct"] for r in result["runs"]]),
        "cpu1_median": med([r["cpu1_busy_pct"] for r in result["runs"]]),
        "server_cpu_median": med([r["server_cpu_pct"] for r in result["runs"]]),
        "errors": sum(sum(r["errors"].values()) for r in result["runs"]),
        "resumed": sum(r["resumed"] for r in result["runs"]),
        "p50_ms_median": med([r["p50_ms"] for r in result["runs"]]),
        "tls": result["runs"][0]["tls"],
        "disturbed_kept": sum(bool(r.get("disturbed")) for r in result["runs"]),
        "foreign_max": max(r["foreign_cpu_pct"] for r in result["runs"]),
    }
    return result


# ----------------------------------------------------------------------------
# scenario C: memory per idle TLS connection


def scenario_c(opts, report: dict) -> None:
    log("C: memory per idle TLS connection")
    origin = Origin(WORK / "origin")   # each connection's one GET is proxied to it
    try:
        for server in ("veil", "nginx"):
            report.setdefault("C", []).append(c_one(opts, server))
    finally:
        origin.stop()


def c_one(opts, server: str) -> dict:
    log(f" C {server}")
    result: dict = {"server": server, "runs": []}
    for r in range(opts.runs):
        run = WORK / f"c-{server}"
        srv, warm = start_cached(server, "ecdsa", run)
        try:
            wait_quiet()
            hsbench(["idle", "-addr", f"127.0.0.1:{TLS_PORT}", "-sni", HOST, "-n", "50",
                     "-hold", "0s"], 20)
            time.sleep(1.0)
            main_idle, tree_idle = rss_kib(server_pids(srv.pid)), rss_kib(tree_pids(srv.pid))
            cmd = ["timeout", "20", "taskset", "-c", LOAD_CPU, str(HSBENCH), "idle",
                   "-addr", f"127.0.0.1:{TLS_PORT}", "-sni", HOST, "-n", str(opts.idle),
                   "-open", "10s", "-hold", "15s"]
            client = subprocess.Popen(cmd, env=dict(base_env(), GOMAXPROCS="1"),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            try:
                line = client.stdout.readline()
                opened = json.loads(line)
                time.sleep(1.5)
                main_loaded = rss_kib(server_pids(srv.pid))
                tree_loaded = rss_kib(tree_pids(srv.pid))
                est = established(TLS_PORT)
            finally:
                client.stdin.close()
                try:
                    client.wait(20)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait()
            n = opened["opened"] or 1
            one = {"opened": opened["opened"], "open_s": round(opened["open_seconds"], 2),
                   "statuses": opened["statuses"], "errors": opened["errors"],
                   "established_at_measure": est,
                   "rss_idle_kib": main_idle, "rss_loaded_kib": main_loaded,
                   "tree_idle_kib": tree_idle, "tree_loaded_kib": tree_loaded,
                   "kib_per_conn": round((main_loaded - main_idle) / n, 1),
                   "tree_kib_per_conn": round((tree_loaded - tree_idle) / n, 1)}
            result["runs"].append(one)
            log(f"   run {r + 1}: {one}")
        finally:
            srv.stop()
    per = [r["kib_per_conn"] for r in result["runs"]]
    result["summary"] = {"median": med(per), "min": min(per), "max": max(per),
                         "tree_median": med([r["tree_kib_per_conn"] for r in result["runs"]]),
                         "rss_idle_median": med([r["rss_idle_kib"] for r in result["runs"]])}
    return result


# ----------------------------------------------------------------------------
# machine, versions, report


def sh(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def snapshot_source(live: bool) -> None:
    """Run Veil from an extract of the commit at HEAD (git archive; nothing in the
    repository changes), so that commits landing during a run do not mix versions.
    With `live`, run the working tree as it is (uncommitted changes included)."""
    commit = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if live:
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "veil", "twisted",
                    "schema"])
        SOURCE.update(path=REPO, commit=commit, how="working tree" + (
            f" with uncommitted changes: {dirty}" if dirty else " (clean)"))
    else:
        dest = WORK / f"src-{commit[:12]}"
        if not (dest / ".complete").exists():
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "veil",
                                      "twisted", "schema"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
            (dest / ".complete").write_text(commit + "\n")
        SOURCE.update(path=dest, commit=commit, how=f"git archive of {commit[:12]} in {dest}")
    sys.path.insert(0, str(SOURCE["path"]))


def machine_and_versions() -> dict:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    import cryptography
    import OpenSSL
    import twisted
    dpkg = lambda p: sh(["dpkg-query", "-W", "-f=${Version}", p])  # noqa: E731
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(), "cpu_model": model, "mem_gib": round(int(mem) / 1024 ** 2, 1),
        "kernel": os.uname().release,
        "veil_commit": SOURCE["commit"][:7], "veil_source": SOURCE["how"],
        "twisted": twisted.__version__, "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl_python": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
        "python": sys.version.split()[0],
        "caddy": f"{sh(['caddy', 'version'])} (Debian {dpkg('caddy')})",
        "nginx": f"{sh(['nginx', '-v']).replace('nginx version: ', '')} (Debian "
                 f"{dpkg('nginx-light')}), {sh(['openssl', 'version']).split(' (')[0]}",
        "pebble": f"Pebble (Debian {dpkg('pebble')})",
        "go": sh(["go", "version"]).replace("go version ", ""),
    }


def fmt(v, digits=0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def allowed(row: dict) -> str:
    if row["challenges"] != "default":
        return f"{row['challenges']} only"
    return {"veil": "tls-alpn-01, http-01 (default)",
            "caddy": "http-01, tls-alpn-01 (default)"}[row["server"]]


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# bench/edge figures — {m['date']}", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, kernel "
             f"{m['kernel']}. Veil {m['veil_commit']} ({m['veil_source']}), Twisted "
             f"{m['twisted']}, pyOpenSSL {m['pyopenssl']}, cryptography {m['cryptography']} "
             f"({m['openssl_python']}), CPython {m['python']}. Caddy {m['caddy']}. nginx "
             f"{m['nginx']}. {m['pebble']}. Client: Go {m['go']}.", ""]
    if "A" in report:
        lines += ["## A — time to first handshake for a new name (certificate from Pebble)", "",
                  "| server | key | challenges allowed | first handshake ms: median (min–max) "
                  "| ok | second (cached) ms: median (min–max) | account + first order ms "
                  "| challenge Pebble validated ¹ |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["A"]:
            s = r["summary"]
            flag = f" ({s['disturbed_kept']} disturbed)" if s.get("disturbed_kept") else ""
            lines.append(
                f"| {r['server']} | {r['key']} | {allowed(r)} | {fmt(s['first_median_ms'])} "
                f"({fmt(s['first_min_ms'])}–{fmt(s['first_max_ms'])}){flag} | "
                f"{s['first_ok']}/{s['first_n']} | {fmt(s['second_median_ms'], 1)} "
                f"({fmt(s['second_min_ms'], 1)}–{fmt(s['second_max_ms'], 1)}) | "
                f"{fmt(r['warm']['ms'])} | "
                + ", ".join(f"{k} ×{v}" for k, v in sorted(r["pebble"]["validations"].items()))
                + " |")
        lines += ["", "¹ Orders made while the row ran, warm-up and names replaced after a "
                  "disturbance included.", ""]
    if "B" in report:
        lines += ["## B — full TLS 1.3 handshakes per second, cached name, one core", "",
                  "| server | key | handshakes/s: median (min–max) | CPU 0 busy % | CPU 1 "
                  "busy % | server CPU % | per CPU0-second | errors | resumed | TLS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["B"]:
            s = r["summary"]
            per = s["median"] / (s["cpu0_median"] / 100) if s["cpu0_median"] else None
            flag = (f" ({s['disturbed_kept']} run disturbed, up to {s['foreign_max']}% "
                    "foreign CPU)") if s.get("disturbed_kept") else ""
            lines.append(
                f"| {r['server']} | {r['key']} | {fmt(s['median'])} ({fmt(s['min'])}–"
                f"{fmt(s['max'])}){flag} | {fmt(s['cpu0_median'])} | {fmt(s['cpu1_median'])} | "
                f"{fmt(s['server_cpu_median'])} | {fmt(per)} | {s['errors']} | {s['resumed']} | "
                f"{s['tls']} |")
        lines.append("")
    if "C" in report:
        lines += ["## C — memory per idle TLS connection (ECDSA; one proxied GET each, then "
                  "idle)", "",
                  "| server | KiB/conn: median (min–max) ² | RSS before, KiB ² | whole tree "
                  "KiB/conn (incl. PostgreSQL) | opened / established |",
                  "|---|---|---|---|---|"]
        for r in report["C"]:
            s = r["summary"]
            lines.append(
                f"| {r['server']} | {fmt(s['median'], 1)} ({fmt(s['min'], 1)}–"
                f"{fmt(s['max'], 1)}) | {fmt(s['rss_idle_median'])} | "
                f"{fmt(s['tree_median'], 1)} | "
                + ", ".join(f"{x['opened']}/{x['established_at_measure']}" for x in r["runs"])
                + " |")
        lines += ["", "² The server's processes without PostgreSQL: Veil's twistd process; "
                  "nginx's master and worker.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="A,B,C", help="scenarios, comma-separated (A,B,C)")
    ap.add_argument("--runs", type=int, default=3, help="runs per B and C figure")
    ap.add_argument("--duration", type=int, default=10, help="seconds per B run (<= 10)")
    ap.add_argument("--conns", type=int, default=50, help="B client workers")
    ap.add_argument("--names", type=int, default=10, help="new names per A row")
    ap.add_argument("--idle", type=int, default=2000, help="C idle connections")
    ap.add_argument("--a-keys", default="ecdsa,rsa", help="key types for A")
    ap.add_argument("--b-keys", default="ecdsa,rsa", help="key types for B")
    ap.add_argument("--b-servers", default="veil,nginx,twisted",
                    help="servers for B (twisted: bare_tls.py, Veil's context without the edge)")
    ap.add_argument("--no-a-extra", dest="a_extra", action="store_false",
                    help="skip A's same-challenge rows (Veil http-01, Caddy tls-alpn-01)")
    ap.add_argument("--live-tree", action="store_true",
                    help="run Veil from the working tree instead of an extract of HEAD")
    opts = ap.parse_args()
    opts.duration = max(1, min(opts.duration, 10))
    opts.a_keys = [k for k in opts.a_keys.split(",") if k]
    opts.b_keys = [k for k in opts.b_keys.split(",") if k]
    opts.b_servers = [k for k in opts.b_servers.split(",") if k]
    only = {s.strip().upper() for s in opts.only.split(",")}
    WORK.mkdir(parents=True, exist_ok=True)
    busy = [p for p in (TLS_PORT, HTTP_PORT, DASH_PORT, ASK_PORT, ORIGIN_PORT, PEBBLE_PORT,
                        PEBBLE_MGMT, DNS_PORT, DNS_MGMT) if not port_free(p)]
    if busy:
        log(f"ports in use on 127.0.0.1: {busy}; stop what uses them first")
        return 1

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    snapshot_source(opts.live_tree)
    report: dict = {"machine": machine_and_versions(),
                    "options": {k: v for k, v in vars(opts).items()}}
    log(f"machine: {report['machine']}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    status = 0
    try:
        if "A" in only:
            scenario_a(opts, report)
        if "B" in only:
            scenario_b(opts, report)
        if "C" in only:
            scenario_c(opts, report)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping servers")
        status = 130
    except Exception as e:
        log(f"failed: {e!r}")
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        Proc.stop_all()
    out = WORK / f"results-{stamp}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (WORK / f"report-{stamp}.md").write_text(md + "\n")
    if status == 0:
        shutil.copy(out, WORK / "latest.json")
        (WORK / "latest.md").write_text(md + "\n")
    print("\n" + md)
    log(f"raw results: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
