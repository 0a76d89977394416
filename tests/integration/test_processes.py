"""
C{twistd veil --workers N}: several full Veil processes on one machine,
sharing the listening ports, as an operator runs them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.integration.test_twistd import REPO, Veil, free_port, postgres_pids
from tests.support.origin import OriginFactory
from tests.support.waiting import until
from veil.processes import ChildFailed, ProcessGroup
from veil.store import embedded


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


#: Binds the three ports, puts them at fds 3, 4, 5 as systemd does, and
#: execs twistd (same pid) with LISTEN_FDS naming them.
SOCKET_ACTIVATION = r"""
import os, socket, sys
names = sys.argv[1].split(":")
ports = [int(p) for p in sys.argv[2].split(":")]
sockets = []
for port in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    sockets.append(s)
copies = [os.dup(s.fileno()) for s in sockets]
for s in sockets:
    s.close()
for i, fd in enumerate(copies):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(ports))
os.environ["LISTEN_FDNAMES"] = ":".join(names)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c",
         "from twisted.scripts.twistd import run; run()"] + sys.argv[3:])
"""


class ProcessesTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="veil-mp-"))
        os.chmod(self.data_dir, 0o755)
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.data_dir)])
        self.dashboard = free_port()
        self.edge = free_port()
        self.http = free_port()
        self.processes: list[tuple[Veil, object]] = []
        self.addCleanup(self._kill_leftovers)
        self.child_pids: set[int] = set()

    def _kill_leftovers(self) -> None:
        for veil, transport in self.processes:
            if veil.status is None:
                transport.signalProcess("KILL")
        for pid in self.child_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in postgres_pids(self.data_dir / "postgres"):
            os.kill(pid, signal.SIGKILL)

    def environ(self, **env: str) -> dict[str, str]:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "VEIL_DATA_DIR": str(self.data_dir),
            "VEIL_DASHBOARD_PORT": str(self.dashboard),
            "VEIL_EDGE_PORT": str(self.edge),
            "VEIL_HTTP_PORT": str(self.http),
        }
        environ.update(env)
        return environ

    def spawn(self, *args: str, prefix: list[str] | None = None,
              twistd: tuple[str, ...] = (), **env: str) -> Veil:
        veil = Veil()
        argv = prefix or [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        transport = reactor.spawnProcess(
            veil, sys.executable, argv + ["--nodaemon", "--pidfile=", *twistd, "veil", *args],
            env=self.environ(**env), path=str(self.data_dir))
        self.processes.append((veil, transport))
        return veil

    async def health(self, veil: Veil, within: float = 90.0) -> dict:
        """/health once every process is ready."""
        deadline = reactor.seconds() + within
        while True:
            if veil.status is not None:
                raise AssertionError(f"Veil exited {veil.status}:\n{veil.output.decode()}")
            try:
                response = await treq.get(f"http://127.0.0.1:{self.dashboard}/health",
                                          persistent=False)
                body = json.loads(await response.content())
                processes = body["workers"].get("processes", {})
                if body["phase"] == "running" and all(p["ready"] for p in processes.values()):
                    self.child_pids.update(p["pid"] for p in processes.values())
                    return body
            except ConnectionRefusedError:
                pass
            if reactor.seconds() > deadline:
                raise AssertionError(f"not ready after {within} s:\n{veil.output.decode()}")
            await deferLater(reactor, 0.25, lambda: None)

    async def add_site(self, origin_port: int) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "veil.cli", "sites", "add", "shop.test", "--origin",
             f"http://127.0.0.1:{origin_port}", "--verified"],
            env=self.environ(), path=str(REPO))
        self.assertEqual(code, 0, (out + err).decode())

    def get(self) -> int:
        """One request on a new TLS connection (blocking: run it in a thread)."""
        context = ssl.create_default_context(cafile=str(self.data_dir / "ca" / "ca.crt"))
        with socket.create_connection(("127.0.0.1", self.edge), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="shop.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        return int(data.split(b" ", 2)[1])

    async def main_requests(self) -> float:
        response = await treq.get(f"http://127.0.0.1:{self.dashboard}/metrics", persistent=False)
        for line in (await response.text()).splitlines():
            if line.startswith("veil_proxy_requests_total "):
                return float(line.split()[1])
        return 0.0

    def log_rows(self) -> int:
        with psycopg.connect(embedded.conninfo_for(self.data_dir)) as conn:
            return conn.execute("SELECT count(*) FROM request_log").fetchone()[0]

    async def test_workers_share_ports_restart_and_stop_together(self) -> None:
        """
        Two processes: both serve the edge port, every request is logged
        once, a killed child is started again, and SIGTERM stops both (and
        the embedded cluster) with status 0.
        """
        origin = reactor.listenTCP(0, OriginFactory(reactor), interface="127.0.0.1")
        self.addCleanup(origin.stopListening)
        veil = self.spawn("--workers", "2")
        body = await self.health(veil)
        self.assertEqual(list(body["workers"]["processes"]), ["1"])
        first_child = body["workers"]["processes"]["1"]["pid"]
        self.assertTrue(alive(first_child))

        await self.add_site(origin.getHost().port)
        statuses = []
        for _ in range(60):
            statuses.append(await deferToThread(self.get))
        self.assertEqual(statuses, [200] * 60)
        in_main = await self.main_requests()
        # SO_REUSEPORT spreads new connections over both processes.
        self.assertGreater(in_main, 0)
        self.assertLess(in_main, 60)
        await until(lambda: self.log_rows() == 60, within=10)

        os.kill(first_child, signal.SIGKILL)

        async def restarted() -> bool:
            response = await treq.get(f"http://127.0.0.1:{self.dashboard}/health",
                                      persistent=False)
            processes = json.loads(await response.content())["workers"]["processes"]
            child = processes.get("1")
            return bool(child and child["pid"] != first_child and child["ready"]
                        and child["restarts"] == 1)

        await until(restarted, within=20)
        body = await self.health(veil)
        second_child = body["workers"]["processes"]["1"]["pid"]
        self.assertEqual([await deferToThread(self.get) for _ in range(10)], [200] * 10)

        _, transport = self.processes[-1]
        transport.signalProcess("TERM")
        status = await veil.ended.addTimeout(40, reactor)
        self.assertEqual(status, 0, veil.output.decode())
        self.assertFalse(alive(second_child))
        self.assertEqual(postgres_pids(self.data_dir / "postgres"), [])
        self.assertIn(b"Veil process 1 (pid %d) stopped: exit status 0" % second_child,
                      veil.output)

    async def test_json_logger(self) -> None:
        """
        The systemd unit's command line, twistd --logger
        veil.logs.json_observer veil --workers 2: the other process is
        started with the same logger (by name), both become ready, and
        every line either writes is a JSON event, the child's tagged with
        its number.
        """
        veil = self.spawn("--workers", "2", twistd=("--logger", "veil.logs.json_observer"))
        body = await self.health(veil)
        self.assertTrue(body["workers"]["processes"]["1"]["ready"])
        _, transport = self.processes[-1]
        transport.signalProcess("TERM")
        self.assertEqual(await veil.ended.addTimeout(40, reactor), 0, veil.output.decode())
        # jsonFileLogObserver: RS (0x1e), the JSON object, a line feed.
        records = [r for r in veil.output.decode().split("\n") if r]
        self.assertEqual([r for r in records if not r.startswith("\x1e{")], [])
        events = [json.loads(r[1:]) for r in records]
        self.assertIn(1, {event.get("veil_process") for event in events})
        self.assertIn("Veil {version} ready", {event.get("log_format") for event in events})

    async def test_child_stops_when_main_dies(self) -> None:
        """A child whose main process is killed sees its pipe close and stops."""
        veil = self.spawn("--workers", "2")
        body = await self.health(veil)
        child = body["workers"]["processes"]["1"]["pid"]
        _, transport = self.processes[-1]
        transport.signalProcess("KILL")
        await veil.ended
        await until(lambda: not alive(child), within=20)

    async def test_systemd_socket_activation(self) -> None:
        """
        Sockets passed by systemd (LISTEN_FDS, named) are used by the main
        process and shared with the other one.
        """
        origin = reactor.listenTCP(0, OriginFactory(reactor), interface="127.0.0.1")
        self.addCleanup(origin.stopListening)
        # Veil's own configured ports are elsewhere: only the passed sockets work.
        prefix = [sys.executable, "-c", SOCKET_ACTIVATION, "edge:http:dashboard",
                  f"{self.edge}:{self.http}:{self.dashboard}"]
        veil = self.spawn("--workers", "2", prefix=prefix, VEIL_EDGE_PORT="0",
                          VEIL_HTTP_PORT="0", VEIL_DASHBOARD_PORT="0")
        body = await self.health(veil)
        self.assertTrue(body["workers"]["processes"]["1"]["ready"])
        await self.add_site(origin.getHost().port)
        self.assertEqual([await deferToThread(self.get) for _ in range(20)], [200] * 20)
        await until(lambda: self.log_rows() == 20, within=10)
        _, transport = self.processes[-1]
        transport.signalProcess("TERM")
        self.assertEqual(await veil.ended.addTimeout(40, reactor), 0, veil.output.decode())

    async def test_socket_activation_unknown_name(self) -> None:
        """A passed socket with a name Veil does not know stops it before it starts."""
        prefix = [sys.executable, "-c", SOCKET_ACTIVATION, "edge:admin", f"{self.edge}:{self.http}"]
        veil = self.spawn(prefix=prefix)
        status = await veil.ended.addTimeout(60, reactor)
        self.assertEqual(status, 1, veil.output.decode())
        self.assertIn(b"'admin' is not one of: edge, http, dashboard", veil.output)


class ProcessGroupTests(TestCase):
    """L{ProcessGroup} on the real reactor, for what the twistd tests cannot provoke."""

    timeout = 30

    async def test_child_cannot_be_started(self) -> None:
        """
        A child that cannot even be started (exec fails, or a bad command
        line) fails start() with ChildFailed naming it, leaves nothing
        behind, and stop() still completes: the main process can stop its
        cluster in order.
        """
        for argv in ([sys.executable, "-c", object()], ["/nonexistent/veil-child"]):
            group = ProcessGroup(reactor, 2, lambda index, argv=argv: list(argv),
                                 lambda index: {}, {})
            with self.assertRaises(ChildFailed) as raised:
                await group.start()
            self.assertIn("Veil process 1", str(raised.exception))
            self.assertEqual(group.children, {})
            await group.stop()
