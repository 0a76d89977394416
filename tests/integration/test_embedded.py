"""
Tests for L{veil.store.embedded} (Veil's private PostgreSQL cluster) and for
the test support's throwaway cluster, against real PostgreSQL binaries.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.postgres import TEMPLATE, cluster, fresh_database
from veil.errors import EmbeddedPostgresError
from veil.store import embedded
from veil.store.embedded import (
    MAX_SOCKET_PATH,
    EmbeddedPostgres,
    conninfo_for,
    find_bindir,
    initdb_argv,
    is_postmaster_for,
    pg_ctl_sync,
    pgserver_bindir,
    pid_alive,
    prepare_cluster_dirs,
    restart_delay,
    run_as_user,
    socket_dir_for,
    system_bindir,
)

ROOT = os.geteuid() == 0


def absolute_temp(testcase: SynchronousTestCase) -> Path:
    """A fresh, absolute, not yet existing path under trial's temporary directory."""
    return Path(testcase.mktemp()).absolute()


def postgres_pids(pgdata: Path) -> list[int]:
    """Live processes working in C{pgdata}: the postmaster and its children."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        try:
            same = os.path.samefile(cwd, pgdata)
        except OSError:
            continue
        if same and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll C{predicate} every 50 ms; fail if it is not true within C{within} seconds."""
    deadline = reactor.seconds() + within
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not true within {within:g} s: {what}")
        await deferLater(reactor, 0.05, lambda: None)


def query(conninfo: str, statement: str) -> Deferred[list[tuple]]:
    """Run one statement on a thread (autocommit); fires with its rows."""

    def run() -> list[tuple]:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    return deferToThread(run)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


class BinaryDiscoveryTests(SynchronousTestCase):
    """find_bindir takes the configured directory, then pgserver, then the system."""

    def test_configured_missing(self) -> None:
        """A configured directory that does not exist is an error naming it."""
        missing = absolute_temp(self)
        e = self.assertRaises(EmbeddedPostgresError, find_bindir, missing)
        self.assertIn(str(missing), str(e))

    def test_configured_without_binaries(self) -> None:
        """A configured directory without initdb/postgres/pg_ctl is an error naming both."""
        empty = absolute_temp(self)
        empty.mkdir()
        e = self.assertRaises(EmbeddedPostgresError, find_bindir, empty)
        self.assertIn(str(empty), str(e))
        self.assertIn("initdb", str(e))

    def test_configured_used(self) -> None:
        """A configured directory holding the binaries is used as it is."""
        found = find_bindir(None)
        self.assertEqual(find_bindir(str(found)), found)

    def test_pgserver_first(self) -> None:
        """With the pgserver wheel installed, its bundled binaries are chosen."""
        bundled = pgserver_bindir()
        if bundled is None:
            raise self.skipTest("pgserver is not installed")
        self.assertEqual(bundled.parts[-3:], ("pgserver", "pginstall", "bin"))
        self.assertEqual(find_bindir(None), bundled)

    def test_system(self) -> None:
        """Without pgserver, the system's binaries are found (pg_config or /usr/lib)."""
        found = system_bindir()
        if found is None:
            raise self.skipTest("no system PostgreSQL")
        for name in ("initdb", "postgres"):
            self.assertTrue(os.access(found / name, os.X_OK))
        self.patch(embedded, "pgserver_bindir", lambda: None)
        self.assertEqual(find_bindir(None), found)

    def test_nothing_found(self) -> None:
        """With no binaries anywhere, the error says what to install."""
        self.patch(embedded, "pgserver_bindir", lambda: None)
        self.patch(embedded, "system_bindir", lambda: None)
        e = self.assertRaises(EmbeddedPostgresError, find_bindir, None)
        self.assertIn("pip install 'veil[embedded]'", str(e))
        self.assertIn("apt-get install postgresql", str(e))
        self.assertIn("database.url", str(e))


class LayoutTests(SynchronousTestCase):
    """Where the cluster's files go, who owns them, and who may reach them."""

    def test_socket_dir_beside_cluster(self) -> None:
        """A short data directory keeps its socket directory inside it."""
        self.assertEqual(socket_dir_for(Path("/srv/veil")), Path("/srv/veil/postgres-run"))

    def test_socket_dir_long_path(self) -> None:
        """A data directory too long for a socket path gets /tmp/veil-pg-<hash>."""
        long = Path("/srv/" + "d" * 90)
        digest = hashlib.sha256(str(long).encode()).hexdigest()[:12]
        self.assertGreater(len(str(long / "postgres-run/.s.PGSQL.5432")), MAX_SOCKET_PATH)
        self.assertEqual(socket_dir_for(long), Path(f"/tmp/veil-pg-{digest}"))

    def test_socket_dir_unsafe_characters(self) -> None:
        """A path that unix_socket_directories would split (comma, space) moves to /tmp."""
        self.assertEqual(socket_dir_for(Path("/srv/a,b")).parent, Path("/tmp"))
        self.assertEqual(socket_dir_for(Path("/srv/a b")).parent, Path("/tmp"))

    def test_initdb_argv(self) -> None:
        """initdb creates superuser veil, trust on the socket, TCP rejected, UTF8, C."""
        argv = initdb_argv(Path("/pg/bin"), Path("/data/postgres"))
        self.assertEqual(argv[:3], ["/pg/bin/initdb", "-D", "/data/postgres"])
        for option in ("--auth-local=trust", "--auth-host=reject", "--locale=C"):
            self.assertIn(option, argv)
        self.assertEqual(argv[argv.index("-U") + 1], "veil")
        self.assertEqual(argv[argv.index("-E") + 1], "UTF8")
        self.assertNotIn("--no-sync", argv)
        self.assertIn("--no-sync", initdb_argv(Path("/b"), Path("/d"), sync=False))

    def test_restart_delay(self) -> None:
        """Restarts back off from 0.5 s, doubling, to at most 30 s."""
        self.assertEqual([restart_delay(n) for n in range(1, 9)],
                         [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])

    def test_run_as_not_root(self) -> None:
        """When not root, the cluster runs as the current user."""
        if ROOT:
            raise self.skipTest("running as root")
        user = run_as_user("postgres")
        self.assertEqual((user.uid, user.switch), (os.geteuid(), False))

    def test_run_as_root(self) -> None:
        """As root: the configured user, else postgres or nobody; never root or unknown."""
        if not ROOT:
            raise self.skipTest("not running as root")
        self.assertIn(run_as_user(None).name, ("postgres", "nobody"))
        self.assertTrue(run_as_user(None).switch)
        self.assertEqual(run_as_user("nobody").name, "nobody")
        self.assertIn("no user", str(self.assertRaises(
            EmbeddedPostgresError, run_as_user, "no-such-user-veil")))
        self.assertIn("root", str(self.assertRaises(EmbeddedPostgresError, run_as_user, "root")))

    def test_traversal_fixed(self) -> None:
        """As root, an ancestor the cluster user cannot search gets o+x (not o+r) and a warning."""
        if not ROOT:
            raise self.skipTest("not running as root")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        closed = absolute_temp(self)
        closed.mkdir(mode=0o700)
        os.chmod(closed, 0o700)
        user = run_as_user(None)
        layout = prepare_cluster_dirs(closed / "data", user)
        self.addCleanup(layout.socket_dir.rmdir)
        self.assertEqual(stat.S_IMODE(os.stat(closed).st_mode), 0o701)
        self.assertEqual(stat.S_IMODE(os.stat(layout.socket_dir).st_mode), 0o700)
        self.assertEqual(os.stat(layout.socket_dir).st_uid, user.uid)
        warned = [e for e in events if e.get("directory") == str(closed)]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"].name, "warn")


class EmbeddedCase(TestCase):
    """Shared set-up: services on temporary data directories, stopped and checked."""

    timeout = 120

    def start(self, data_dir: Path, **kwargs: object) -> EmbeddedPostgres:
        """Start a service on C{data_dir}; stop it at clean-up and check nothing is left."""
        service = EmbeddedPostgres(data_dir, reactor=reactor, fsync=False, **kwargs)
        service.startService()
        self.addCleanup(lambda: Deferred.fromCoroutine(self.stop_and_check(service)))
        return service

    async def stop_and_check(self, service: EmbeddedPostgres) -> None:
        """Stop C{service} if it runs; no PostgreSQL process may remain on its cluster."""
        if service.running:
            await service.stopService()
        pgdata = service.layout.pgdata
        await until(lambda: not postgres_pids(pgdata), f"no postgres on {pgdata}", within=10)

    async def started(self, data_dir: Path, **kwargs: object) -> EmbeddedPostgres:
        """A service on C{data_dir} that is ready."""
        service = self.start(data_dir, **kwargs)
        await service.when_ready()
        return service

    async def existing_cluster(self) -> Path:
        """A data directory holding a cluster that was created and then stopped."""
        data_dir = absolute_temp(self)
        service = await self.started(data_dir)
        await service.stopService()
        return data_dir


class EmbeddedPostgresTests(EmbeddedCase):
    """EmbeddedPostgres creates, reuses, stops and supervises a private cluster."""

    async def test_first_start(self) -> None:
        """The first start runs initdb; the veil database answers on a private socket."""
        data_dir = absolute_temp(self)
        service = self.start(data_dir)
        first, second = service.when_ready(), service.when_ready()
        self.assertIsNot(first, second)
        conninfo = await first
        self.assertEqual(await second, conninfo)
        self.assertEqual(conninfo, f"host={socket_dir_for(data_dir)} user=veil dbname=veil")
        self.assertEqual(conninfo_for(data_dir), conninfo)
        self.assertTrue(service.created_cluster)
        self.assertTrue(service.postmaster_running)
        pgdata = data_dir / "postgres"
        self.assertTrue((pgdata / "PG_VERSION").is_file())
        self.assertEqual(stat.S_IMODE(os.stat(pgdata).st_mode), 0o700)
        assert service.user is not None
        self.assertEqual(os.stat(pgdata).st_uid, service.user.uid)
        sockets = socket_dir_for(data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(sockets).st_mode), 0o700)
        self.assertEqual(os.stat(sockets).st_uid, service.user.uid)
        rows = await query(conninfo, "SELECT current_database(), current_user, 6 * 7")
        self.assertEqual(rows, [("veil", "veil", 42)])
        settings = dict(await query(conninfo, "SELECT name, current_setting(name) FROM pg_settings"
                                              " WHERE name IN ('listen_addresses', 'port',"
                                              " 'shared_buffers')"))
        # 128 MB of buffers keep the request log's client index in memory up to
        # about 2 million rows a partition (docs/performance.md).
        self.assertEqual(settings, {"listen_addresses": "", "port": "5432",
                                    "shared_buffers": "128MB"})
        self.assertEqual(service.status()["running"], True)

    async def test_reuses_cluster(self) -> None:
        """A new service on the same data directory keeps the data and skips initdb."""
        data_dir = absolute_temp(self)
        first = await self.started(data_dir)
        await query(first.conninfo, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        version = os.stat(data_dir / "postgres" / "PG_VERSION")
        await first.stopService()
        second = await self.started(data_dir)
        self.assertFalse(second.created_cluster)
        self.assertEqual(await query(second.conninfo, "SELECT n FROM kept"), [(7,)])
        again = os.stat(data_dir / "postgres" / "PG_VERSION")
        self.assertEqual((again.st_ino, again.st_mtime_ns), (version.st_ino, version.st_mtime_ns))

    async def test_stop_waits_for_exit(self) -> None:
        """stopService fires only once the postmaster has exited; no server remains."""
        data_dir = absolute_temp(self)
        service = await self.started(data_dir)
        pid = service.pid
        assert pid is not None
        stopping = service.stopService()
        self.assertNoResult(stopping)
        await stopping
        self.assertFalse(pid_alive(pid))
        self.assertEqual(postgres_pids(data_dir / "postgres"), [])
        self.assertFalse((data_dir / "postgres" / "postmaster.pid").exists())
        self.assertEqual(service.phase, "stopped")
        failure = self.failureResultOf(service.when_ready(), EmbeddedPostgresError)
        self.assertIn("stopped", str(failure.value))

    async def test_stale_pid_dead(self) -> None:
        """A postmaster.pid and a socket lock naming a dead process are removed."""
        data_dir = await self.existing_cluster()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        gone = dead_pid()
        pgdata = data_dir / "postgres"
        (pgdata / "postmaster.pid").write_text(f"{gone}\n{pgdata}\n0\n5432\n\n\n0 0\nready   \n")
        socket_dir_for(data_dir).mkdir(exist_ok=True)
        lock = socket_dir_for(data_dir) / ".s.PGSQL.5432.lock"
        lock.write_text(f"{gone}\n{pgdata}\n")
        service = await self.started(data_dir)
        self.assertNotEqual(service.pid, gone)
        self.assertEqual(await query(service.conninfo, "SELECT 1"), [(1,)])
        self.assertEqual([e["pid"] for e in events if "stale" in e["log_format"]], [gone, gone])

    async def test_stale_pid_not_postgres(self) -> None:
        """A postmaster.pid naming a live process that is not PostgreSQL is removed."""
        data_dir = await self.existing_cluster()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        pgdata = data_dir / "postgres"
        (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")
        service = await self.started(data_dir)
        self.assertEqual(await query(service.conninfo, "SELECT 1"), [(1,)])
        self.assertTrue(pid_alive(os.getpid()))
        self.assertIn(os.getpid(), [e.get("pid") for e in events if "stale" in e["log_format"]])

    async def test_orphan_stopped(self) -> None:
        """A server left running on the cluster by an earlier run is stopped and replaced."""
        data_dir = await self.existing_cluster()
        pgdata = data_dir / "postgres"
        prepare_cluster_dirs(data_dir, run_as_user(None))
        pg_ctl_sync(pgdata, [
            "-l", str(pgdata / "orphan.log"), "-w", "start",
            "-o", f"-c listen_addresses='' -c unix_socket_directories={socket_dir_for(data_dir)}",
        ])
        orphan = int((pgdata / "postmaster.pid").read_text().split()[0])
        self.addCleanup(lambda: pid_alive(orphan) and os.kill(orphan, 9))
        self.assertTrue(is_postmaster_for(orphan, pgdata))
        service = await self.started(data_dir)
        self.assertFalse(pid_alive(orphan))
        self.assertNotEqual(service.pid, orphan)
        self.assertEqual(await query(service.conninfo, "SELECT 1"), [(1,)])

    async def test_restarted_after_crash(self) -> None:
        """A postmaster stopped behind Veil's back (pg_ctl -m immediate) is started again."""
        data_dir = absolute_temp(self)
        service = await self.started(data_dir)
        first = service.pid
        pg_ctl_sync(data_dir / "postgres", ["stop", "-m", "immediate"])
        await until(lambda: service.restarts == 1 and service.postmaster_running,
                    "the postmaster was restarted")
        self.assertNotEqual(service.pid, first)
        self.assertFalse(pid_alive(first))
        conninfo = await service.when_ready()
        self.assertEqual(await query(conninfo, "SELECT 1"), [(1,)])
        self.assertIn(f"PostgreSQL (pid {first})", service.last_error or "")
        self.assertEqual(service.status()["restarts"], 1)

    async def test_system_binaries(self) -> None:
        """Without pgserver, the service finds and runs the system's PostgreSQL."""
        system = system_bindir()
        if system is None:
            raise self.skipTest("no system PostgreSQL")
        self.patch(embedded, "pgserver_bindir", lambda: None)
        service = await self.started(absolute_temp(self))
        self.assertEqual(service.found_bindir, system)
        rows = await query(service.conninfo, "SELECT current_setting('server_version_num')")
        self.assertGreaterEqual(int(rows[0][0]), 140000)

    async def test_missing_bindir(self) -> None:
        """A configured binary directory that does not exist fails when_ready, naming it."""
        missing = absolute_temp(self)
        service = self.start(absolute_temp(self), bindir=missing)
        with self.assertRaises(EmbeddedPostgresError) as caught:
            await service.when_ready()
        self.assertIn(str(missing), str(caught.exception))
        self.assertEqual(service.phase, "failed")
        self.assertIn(str(missing), service.last_error or "")

    async def test_not_a_cluster(self) -> None:
        """A non-empty cluster directory without PG_VERSION is refused, not overwritten."""
        data_dir = absolute_temp(self)
        user = run_as_user(None)
        pgdata = data_dir / "postgres"
        pgdata.mkdir(parents=True)
        (pgdata / "precious").write_text("keep me")
        os.chown(pgdata, user.uid, user.gid)
        os.chmod(pgdata, 0o700)
        service = self.start(data_dir)
        with self.assertRaises(EmbeddedPostgresError) as caught:
            await service.when_ready()
        self.assertIn("not a PostgreSQL cluster", str(caught.exception))
        self.assertEqual((pgdata / "precious").read_text(), "keep me")

    async def test_one_supervisor(self) -> None:
        """A second service on a data directory already supervised is refused."""
        data_dir = absolute_temp(self)
        first = await self.started(data_dir)
        second = self.start(data_dir)
        with self.assertRaises(EmbeddedPostgresError) as caught:
            await second.when_ready()
        self.assertIn("already supervised", str(caught.exception))
        self.assertTrue(first.postmaster_running)
        await second.stopService()
        await first.stopService()


class TestClusterTests(SynchronousTestCase):
    """The test support's cluster hands out migrated databases cloned from a template."""

    def test_fresh_database(self) -> None:
        """fresh_database gives a usable, distinct database with schema_migrations."""
        one, two = fresh_database(self), fresh_database(self)
        self.assertNotEqual(one, two)
        with psycopg.connect(one, autocommit=True) as conn:
            name, = conn.execute("SELECT current_database()").fetchone()
            self.assertTrue(name.startswith("test_"))
            conn.execute("SELECT version FROM schema_migrations").fetchall()
        with cluster().admin_connect() as conn:
            rows = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s",
                                (TEMPLATE,)).fetchall()
        self.assertEqual(rows, [(True,)])
        self.assertEqual(stat.S_IMODE(os.stat(cluster().socket_dir).st_mode), 0o700)
