"""
End-to-end tests of C{twistd veil} as an operator runs it: a real process on
its embedded defaults, with its own PostgreSQL cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.integration.test_migrate import DATA_MODEL, empty_database
from veil.store import embedded

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Veil(ProcessProtocol):
    """A C{twistd veil} process: its output, and its end."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.status = reason.value.exitCode
        if reason.value.signal is not None:
            self.status = -reason.value.signal
        self.ended.callback(self.status)


def postgres_pids(pgdata: Path) -> list[int]:
    """Processes whose command line names this cluster's data directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(pgdata).encode() == arg for arg in cmdline):
            pids.append(int(entry.name))
    return pids


class TwistdTestCase(TestCase):
    """Runs C{twistd veil} processes on a data directory of the test's own."""

    timeout = 180

    def setUp(self) -> None:
        # Short paths: the cluster's socket lives under the data directory.
        self.data_dir = Path(tempfile.mkdtemp(prefix="veil-e2e-"))
        os.chmod(self.data_dir, 0o755)
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.data_dir)])
        self.dashboard = free_port()
        self.processes: list[tuple[Veil, object]] = []
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        for veil, transport in self.processes:
            if veil.status is None:
                transport.signalProcess("KILL")
        for pid in postgres_pids(self.data_dir / "postgres"):
            os.kill(pid, signal.SIGKILL)

    def spawn(self, **env: str) -> Veil:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "VEIL_DATA_DIR": str(self.data_dir),
            "VEIL_DASHBOARD_PORT": str(self.dashboard),
            "VEIL_EDGE_PORT": str(free_port()),
            "VEIL_HTTP_PORT": str(free_port()),
        }
        environ.update(env)
        veil = Veil()
        veil.ports = [int(environ[f"VEIL_{name}_PORT"]) for name in ("DASHBOARD", "EDGE", "HTTP")]
        transport = reactor.spawnProcess(
            veil, sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "veil"],
            env=environ, path=str(self.data_dir),
        )
        self.processes.append((veil, transport))
        return veil

    async def until(self, veil: Veil, probe: Callable[[], Awaitable[T | None]],
                    within: float, what: str) -> T:
        """
        Poll C{probe} every 0.25 s until it gives something other than
        L{None}; fail if Veil exits first or C{within} seconds pass.
        """
        deadline = reactor.seconds() + within
        while True:
            if veil.status is not None:
                raise AssertionError(f"Veil exited {veil.status}:\n{veil.output.decode()}")
            result = await probe()
            if result is not None:
                return result
            if reactor.seconds() > deadline:
                raise AssertionError(f"{what} after {within} s:\n{veil.output.decode()}")
            await deferLater(reactor, 0.25, lambda: None)

    async def ready(self, veil: Veil, wanted: int = 200, within: float = 90.0) -> dict:
        """Poll /ready until it answers C{wanted}; fail if Veil exits or time runs out."""
        async def probe() -> dict | None:
            try:
                response = await treq.get(f"http://127.0.0.1:{self.dashboard}/ready",
                                          persistent=False)
                body = json.loads(await response.content())
            except ConnectionRefusedError:
                return None
            return body if response.code == wanted else None

        return await self.until(veil, probe, within, f"/ready not {wanted}")

    async def restart_failed(self, veil: Veil, within: float) -> None:
        """Wait until Veil has logged a failed restart of its cluster."""
        async def probe() -> bool | None:
            return True if b"Restarting PostgreSQL failed" in veil.output else None

        await self.until(veil, probe, within, "no failed restart logged")

    async def stop(self, veil: Veil, transport: object) -> int:
        transport.signalProcess("TERM")
        status = await veil.ended.addTimeout(15, reactor)
        return status

    def conninfo(self) -> str:
        return embedded.conninfo_for(self.data_dir)

    async def cli(self, *argv: str) -> tuple[bytes, bytes, int]:
        """Run the C{veil} command on this test's data directory, in a child process."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
               "VEIL_DATA_DIR": str(self.data_dir)}
        code = "import sys; from veil.cli import main; sys.exit(main())"
        return await getProcessOutputAndValue(sys.executable, ("-c", code, *argv), env=env,
                                              path=str(REPO))


class TwistdTests(TwistdTestCase):
    """The Quick start: twistd veil on embedded defaults comes up, stops cleanly, reuses its data."""

    async def test_lifecycle(self) -> None:
        """
        First start creates the cluster and the whole data model and reports
        ready; SIGTERM stops Veil and its cluster with status 0 and no
        PostgreSQL left; a second start reuses the same data.
        """
        veil = self.spawn()
        body = await self.ready(veil)
        self.assertTrue(body["database"]["ok"])
        pgdata = self.data_dir / "postgres"
        self.assertEqual(os.stat(pgdata).st_mode & 0o777, 0o700)
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            names = {r[0] for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE nspname = 'public' AND relkind IN ('r', 'p')").fetchall()}
            conn.execute("CREATE TABLE kept_between_runs (n int)")
            conn.execute("INSERT INTO kept_between_runs VALUES (7)")
        self.assertLessEqual(DATA_MODEL, names)
        self.assertTrue(postgres_pids(pgdata))
        # The psql command `veil check-config` gives the operator works.
        out, err, status = await self.cli("check-config")
        self.assertEqual(status, 0, err)
        [line] = [line for line in out.decode().splitlines() if line.startswith("psql ")]
        command = line.partition(": ")[2]
        out, err, status = await getProcessOutputAndValue(
            "/bin/sh", ("-c", f"{command} -Atc 'SELECT count(*) > 0 FROM schema_migrations'"),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertEqual((status, out), (0, b"t\n"), err)

        status = await self.stop(*self.processes[-1])
        self.assertEqual(status, 0, veil.output.decode())
        self.assertEqual(postgres_pids(pgdata), [])
        self.assertIn(b"Veil stopped", veil.output)

        again = self.spawn()
        await self.ready(again)
        with psycopg.connect(self.conninfo()) as conn:
            self.assertEqual(conn.execute("SELECT n FROM kept_between_runs").fetchall(), [(7,)])
        status = await self.stop(*self.processes[-1])
        self.assertEqual(status, 0, again.output.decode())
        self.assertEqual(postgres_pids(pgdata), [])

    async def test_embedded_cluster_killed(self) -> None:
        """
        pg_ctl stop -m immediate under a running Veil: /ready turns 503,
        nothing crashes, Veil keeps restarting its cluster (with back-off)
        while the server cannot start, and /ready is 200 again once it can.
        """
        veil = self.spawn()
        await self.ready(veil)
        pgdata = self.data_dir / "postgres"
        # PostgreSQL checks its data directory's mode only when it starts:
        # a mode it refuses holds the restarted server down until the test
        # puts the mode back, so the outage lasts long enough to be seen
        # however fast the machine restarts a cluster.
        os.chmod(pgdata, 0o755)
        try:
            embedded.pg_ctl_sync(pgdata, ["stop", "-m", "immediate"])
            body = await self.ready(veil, 503, within=15)
            self.assertFalse(body["database"]["ok"])
            await self.restart_failed(veil, within=15)
            # The operator's command tells the outage from a stopped Veil.
            _, err, status = await self.cli("sites", "list")
            self.assertEqual(status, 1)
            self.assertIn(b"Veil is running (pid ", err)
            self.assertIn(b"embedded PostgreSQL does not answer", err)
            self.assertNotIn(b"start Veil", err)
        finally:
            os.chmod(pgdata, 0o700)
        await self.ready(veil, 200, within=60)
        self.assertIsNone(veil.status)
        status = await self.stop(*self.processes[-1])
        self.assertEqual(status, 0, veil.output.decode())
        self.assertEqual(postgres_pids(pgdata), [])

    async def test_database_away_at_start(self) -> None:
        """
        With database.url unreachable, Veil waits for it: /ready is 503 with
        the reason, and the connection pool's retries reach the log as one
        rate-limited line, not as [stderr#error] lines; SIGTERM still
        stops it with status 0.
        """
        empty = tempfile.mkdtemp(prefix="veil-nopg-")
        self.addCleanup(os.rmdir, empty)
        veil = self.spawn(VEIL_DATABASE_URL=f"host={empty} dbname=veil user=veil",
                          VEIL_DATABASE_CONNECT_TIMEOUT="1")
        async def waiting() -> dict | None:
            body = await self.ready(veil, 503)
            return body if "the database does not answer" in body["reason"] else None

        body = await self.until(veil, waiting, 30, "no reason given by /ready")
        self.assertIn("no database connection", body["reason"])

        async def retried() -> bool | None:
            return True if veil.output.count(b"Waiting for the database") >= 2 else None

        await self.until(veil, retried, 30, "no second wait for the database")
        self.assertEqual(await self.stop(*self.processes[-1]), 0, veil.output.decode())
        output = veil.output.decode()
        self.assertNotIn("[stderr#", output)
        pool_lines = [line for line in output.splitlines() if "[psycopg.pool#" in line]
        self.assertEqual(len(pool_lines), 1, output)
        self.assertIn("error connecting", pool_lines[0])

    async def test_bad_config_value(self) -> None:
        """A port of 70000 stops twistd before it binds anything, naming the key."""
        veil = self.spawn(VEIL_EDGE_PORT="70000")
        status = await veil.ended.addTimeout(60, reactor)
        self.assertNotEqual(status, 0)
        self.assertIn(b"edge.port", veil.output)
        self.assertIn(b"70000", veil.output)
        # Nothing was bound and no cluster was made.
        with socket.socket() as s:
            s.bind(("127.0.0.1", self.dashboard))
        self.assertFalse((self.data_dir / "postgres").exists())

    async def test_bad_config_file(self) -> None:
        """A bad value in the TOML file names the file and the key."""
        config = self.data_dir / "veil.toml"
        config.write_text("[database]\npool_max = 70000\n")
        veil = self.spawn(VEIL_CONFIG=str(config))
        status = await veil.ended.addTimeout(60, reactor)
        self.assertNotEqual(status, 0)
        self.assertIn(b"database.pool_max", veil.output)
        self.assertIn(str(config).encode(), veil.output)


class FatalStartTests(TwistdTestCase):
    """
    Every condition that stops start-up ends twistd with exit status 1 and
    one critical line saying why (no traceback), with its ports released
    and no PostgreSQL of its own left running, whether the condition is
    met before the reactor runs (twistd starts the services first) or
    after.
    """

    timeout = 120

    async def cannot_start(self, veil: Veil, *why: str) -> str:
        """
        Wait for C{veil} to exit; check the status, the one critical line
        (which contains each of C{why}) and that its ports are free.
        """
        status = await veil.ended.addTimeout(60, reactor)
        output = veil.output.decode()
        self.assertEqual(status, 1, output)
        critical = [line for line in output.splitlines() if "#critical]" in line]
        self.assertEqual(len(critical), 1, output)
        self.assertIn("Veil cannot start: ", critical[0])
        for part in why:
            self.assertIn(part, critical[0])
        self.assertNotIn("Traceback", output)
        for port in veil.ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        return critical[0]

    async def test_second_veil_on_the_same_data_directory(self) -> None:
        """
        A second Veil on a data directory whose embedded cluster another
        Veil supervises exits (its own ports released, /health gone); the
        first one keeps serving.
        """
        first = self.spawn()
        await self.ready(first)
        second = self.spawn(VEIL_DASHBOARD_PORT=str(free_port()))
        await self.cannot_start(second, "already supervised by another process")
        body = await self.ready(first)
        self.assertTrue(body["database"]["ok"])
        self.assertEqual(await self.stop(*self.processes[0]), 0, first.output.decode())

    async def test_data_directory_not_a_cluster(self) -> None:
        """A cluster directory holding something else than a cluster stops start-up."""
        pgdata = self.data_dir / "postgres"
        pgdata.mkdir(mode=0o700)
        (pgdata / "notes.txt").write_text("not a cluster\n")
        user = embedded.run_as_user()  # who runs the cluster: its owner
        os.chown(pgdata, user.uid, user.gid)
        veil = self.spawn()
        await self.cannot_start(veil, "is not a PostgreSQL cluster")
        self.assertEqual(postgres_pids(self.data_dir / "postgres"), [])

    async def test_port_in_use(self) -> None:
        """
        A port in use is one line naming the address, the configuration
        keys and the cause; the ports bound before it are released and
        no cluster is started.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            veil = self.spawn(VEIL_HTTP_PORT=str(port))
            veil.ports.remove(port)
            line = await self.cannot_start(veil, f"127.0.0.1:{port}", "http.port",
                                           "already in use")
        self.assertNotIn("CannotListenError", line)
        self.assertFalse((self.data_dir / "postgres").exists())

    async def test_failed_migration(self) -> None:
        """A migration that fails on database.url stops Veil, naming the file."""
        conninfo = empty_database(self)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (something_else int)")
        veil = self.spawn(VEIL_DATABASE_URL=conninfo)
        await self.cannot_start(veil, "001_")

    async def test_unusable_secrets_key(self) -> None:
        """
        A key file that holds no key fails the edge's start, after the
        embedded cluster is up: Veil exits and stops its cluster.
        """
        self.data_dir.joinpath("secrets.key").write_text("not a key\n")
        os.chmod(self.data_dir / "secrets.key", 0o600)
        veil = self.spawn()
        await self.cannot_start(veil, "key")
        self.assertIn(b"PostgreSQL stopped", veil.output)
        self.assertEqual(postgres_pids(self.data_dir / "postgres"), [])
