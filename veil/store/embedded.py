"""
Veil's private PostgreSQL cluster, used when no database URL is configured.

The cluster lives in C{<data_dir>/postgres} and listens on a Unix socket only
(no TCP port).  L{EmbeddedPostgres} creates it on the first run (C{initdb}),
then runs the postmaster as a direct child of Veil and supervises it: if
the server exits while Veil runs, it is started again with exponential
back-off.  Nothing here blocks the reactor: C{initdb} and C{postgres} run
through C{reactor.spawnProcess}, and readiness is polled with timers.

PostgreSQL refuses to run as root.  When Veil is root, the cluster runs as
another user (L{run_as_user}): the cluster and socket directories belong to
that user, mode 0700, and every directory above them and above the binaries
is made searchable by that user.

The synchronous helpers (L{find_bindir}, L{run_as_user},
L{prepare_cluster_dirs}, L{initdb_argv}, L{run_initdb_sync},
L{socket_dir_for}, L{server_settings}, L{pg_ctl_sync}) block; they are for
the command line and the test support, not for the reactor thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import psycopg
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError as DeferredTimeout,
    fail,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import EmbeddedPostgresError

_log = Logger()

#: The superuser initdb creates, and the database Veil uses.
SUPERUSER = "veil"
DATABASE = "veil"
PORT = 5432

#: Binaries a configured C{embedded.bin_dir} must hold.
REQUIRED_BINARIES = ("initdb", "postgres", "pg_ctl")
#: Binaries a system directory must hold to be used.
SERVER_BINARIES = ("initdb", "postgres")

#: Longest socket path (directory + C{/.s.PGSQL.5432}) kept under the data
#: directory; longer ones move to C{/tmp} (C{sun_path} is 108 bytes).
MAX_SOCKET_PATH = 100

_INSTALL_HINT = (
    "no PostgreSQL binaries found for the embedded cluster: install them with"
    " \"pip install 'veil[embedded]'\" (the pgserver wheel) or"
    " \"apt-get install postgresql\", set embedded.bin_dir to a directory holding"
    " initdb, postgres and pg_ctl, or set database.url to use an existing PostgreSQL"
)

# unix_socket_directories is a comma-separated list; keep such paths out of it.
_UNSAFE_IN_SOCKET_DIR = re.compile(r"[\s,'\"\\]")

_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_TAIL_BYTES = 4000


# -- binaries -----------------------------------------------------------------


def _has_binaries(directory: Path, names: Iterable[str]) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK) for name in names
    )


def _configured_bindir(configured: Path) -> Path:
    directory = Path(os.path.abspath(configured))
    if not directory.is_dir():
        raise EmbeddedPostgresError(
            f"embedded.bin_dir {directory} is not a directory; it must hold"
            f" {', '.join(REQUIRED_BINARIES)}"
        )
    missing = [n for n in REQUIRED_BINARIES if not _has_binaries(directory, [n])]
    if missing:
        raise EmbeddedPostgresError(
            f"embedded.bin_dir {directory} has no executable {', '.join(missing)}"
        )
    return directory


def pgserver_bindir() -> Path | None:
    """
    The binaries bundled by the C{pgserver} wheel (C{pgserver/pginstall/bin}),
    if it is installed.  The package is located, not imported.
    """
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        directory = Path(location) / "pginstall" / "bin"
        if _has_binaries(directory, REQUIRED_BINARIES):
            return directory
    return None


def _bindir_from_pg_config(output: bytes) -> Path | None:
    text = output.decode("utf-8", "replace").strip()
    if not text:
        return None
    directory = Path(text)
    return directory if _has_binaries(directory, SERVER_BINARIES) else None


def usr_lib_bindir() -> Path | None:
    """The newest C{/usr/lib/postgresql/*/bin} holding initdb and postgres."""

    def version(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (-1,)

    candidates = [
        d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_binaries(d, SERVER_BINARIES)
    ]
    return max(candidates, key=version) if candidates else None


def system_bindir() -> Path | None:
    """
    The system's PostgreSQL: C{pg_config --bindir} if that directory holds
    initdb and postgres, else the newest C{/usr/lib/postgresql/*/bin}.
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, timeout=10,
                env=_child_env(), check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            if done.returncode == 0:
                found = _bindir_from_pg_config(done.stdout)
                if found is not None:
                    return found
    return usr_lib_bindir()


def find_bindir(configured: Path | str | None) -> Path:
    """
    Where the PostgreSQL server binaries are.

    In order: C{configured} (which must hold initdb, postgres and pg_ctl), the
    C{pgserver} wheel, C{pg_config --bindir}, the newest
    C{/usr/lib/postgresql/*/bin}.  Blocks briefly (runs C{pg_config}).

    @raise EmbeddedPostgresError: naming the configured directory if it is
        unusable, or saying what to install if nothing is found.
    """
    if configured is not None:
        return _configured_bindir(Path(configured))
    found = pgserver_bindir() or system_bindir()
    if found is None:
        raise EmbeddedPostgresError(_INSTALL_HINT)
    return found


async def _find_bindir_async(configured: Path | None, reactor: Any) -> Path:
    """L{find_bindir} with C{pg_config} run through the reactor."""
    if configured is not None:
        return _configured_bindir(configured)
    found = pgserver_bindir()
    if found is not None:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        running = getProcessOutputAndValue(pg_config, ["--bindir"], env=_child_env(),
                                           reactor=reactor)
        running.addTimeout(10, reactor)
        try:
            out, _err, code = await running
        except Exception:
            _log.warn("pg_config --bindir failed; looking in /usr/lib/postgresql")
        else:
            if code == 0:
                found = _bindir_from_pg_config(out)
                if found is not None:
                    return found
    found = usr_lib_bindir()
    if found is None:
        raise EmbeddedPostgresError(_INSTALL_HINT)
    return found


# -- the user the cluster runs as ---------------------------------------------


@attrs.frozen
class RunAs:
    """
    The user the cluster's processes run as.

    @ivar switch: C{True} when Veil is root and so must switch to this user
        for initdb and postgres (and hand it the cluster's directories).
    """

    name: str
    uid: int
    gid: int
    switch: bool

    @property
    def groups(self) -> list[int]:
        """The user's groups (primary and supplementary), as its processes get them."""
        try:
            return os.getgrouplist(self.name, self.gid)
        except OSError:
            return [self.gid]

    def spawn_ids(self) -> tuple[int | None, int | None]:
        """C{(uid, gid)} for C{spawnProcess}: C{(None, None)} when not switching."""
        return (self.uid, self.gid) if self.switch else (None, None)

    def subprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for L{subprocess.run} that run a command as this user."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}


def run_as_user(configured: str | None = None) -> RunAs:
    """
    The user the cluster runs as.

    Not root: the current user (C{configured} is ignored).  Root: C{configured}
    if given, else C{postgres} if that user exists, else C{nobody}.

    @raise EmbeddedPostgresError: if the configured user does not exist or
        is root.
    """
    euid = os.geteuid()
    if euid != 0:
        try:
            name = pwd.getpwuid(euid).pw_name
        except KeyError:
            name = str(euid)
        if configured and configured != name:
            _log.info("embedded.run_as {user} applies only when Veil runs as root;"
                      " the cluster runs as {current}", user=configured, current=name)
        return RunAs(name, euid, os.getegid(), switch=False)
    if configured:
        try:
            entry = pwd.getpwnam(configured)
        except KeyError:
            raise EmbeddedPostgresError(
                f"embedded.run_as: there is no user {configured!r} to run PostgreSQL as"
            ) from None
    else:
        for candidate in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(candidate)
                break
            except KeyError:
                continue
        else:
            raise EmbeddedPostgresError(
                "Veil runs as root and there is neither a 'postgres' nor a 'nobody' user"
                " to run PostgreSQL as; set embedded.run_as"
            )
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(
            f"embedded.run_as: {entry.pw_name!r} is root, and PostgreSQL refuses to run as root"
        )
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


# -- directories --------------------------------------------------------------


@attrs.frozen
class ClusterLayout:
    """
    Where the cluster's files are.

    @ivar pgdata: the cluster (C{PGDATA}).
    @ivar socket_dir: the Unix socket directory.
    @ivar log_file: the server's log (its stdout and stderr).
    @ivar lock_file: held (C{flock}) by the Veil process supervising the cluster.
    @ivar initdb_dir: where a new cluster is created before it is renamed
        to C{pgdata}, so that a half-made cluster is never mistaken for one.
    """

    data_dir: Path
    pgdata: Path
    socket_dir: Path
    log_file: Path
    lock_file: Path
    initdb_dir: Path

    @property
    def conninfo(self) -> str:
        return socket_conninfo(self.socket_dir)


def _absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(path))


def socket_dir_for(data_dir: Path | str) -> Path:
    """
    The socket directory for the cluster under C{data_dir}:
    C{<data_dir>/postgres-run}, or C{/tmp/veil-pg-<hash>} when that path plus
    C{/.s.PGSQL.5432} would exceed L{MAX_SOCKET_PATH} bytes (or holds
    characters that C{unix_socket_directories} would split on).
    """
    data_dir = _absolute(data_dir)
    preferred = data_dir / "postgres-run"
    socket = os.fsencode(str(preferred / f".s.PGSQL.{PORT}"))
    if len(socket) <= MAX_SOCKET_PATH and not _UNSAFE_IN_SOCKET_DIR.search(str(preferred)):
        return preferred
    digest = hashlib.sha256(os.fsencode(str(data_dir))).hexdigest()[:12]
    return Path("/tmp") / f"veil-pg-{digest}"


def layout_for(data_dir: Path | str) -> ClusterLayout:
    """The file layout of the cluster under C{data_dir} (nothing is touched)."""
    data_dir = _absolute(data_dir)
    return ClusterLayout(
        data_dir=data_dir,
        pgdata=data_dir / "postgres",
        socket_dir=socket_dir_for(data_dir),
        log_file=data_dir / "postgres.log",
        lock_file=data_dir / "postgres.lock",
        initdb_dir=data_dir / "postgres.initdb",
    )


def private_dir(path: Path, user: RunAs) -> None:
    """
    Make C{path} a directory owned by C{user}, mode 0700, creating it if
    needed.  An existing directory that belongs to someone else (other than
    us, when we hand it over) is refused, and symbolic links are not followed.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise EmbeddedPostgresError(f"{path} is not a directory: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != user.uid:
            if user.switch and st.st_uid == os.geteuid():
                os.fchown(fd, user.uid, user.gid)
            else:
                raise EmbeddedPostgresError(
                    f"{path} belongs to uid {st.st_uid}, not to {user.name}"
                    f" (uid {user.uid}) who runs PostgreSQL"
                )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _search_bit(st: os.stat_result, user: RunAs) -> tuple[int, str] | None:
    """The search bit C{user} lacks on a directory, or L{None}."""
    mode = st.st_mode
    if st.st_uid == user.uid:
        return None if mode & stat.S_IXUSR else (stat.S_IXUSR, "owner")
    if st.st_gid in user.groups:
        return None if mode & stat.S_IXGRP else (stat.S_IXGRP, "group")
    return None if mode & stat.S_IXOTH else (stat.S_IXOTH, "others")


def ensure_traversable(path: Path, user: RunAs) -> list[Path]:
    """
    Let C{user} search C{path} and every directory above it (through
    symbolic links too), adding only the search bit where it is missing,
    never read, and logging a warning for each change.

    @return: the directories changed.
    """
    if not user.switch:
        return []
    chain: list[Path] = []
    for start in (_absolute(path), Path(os.path.realpath(path))):
        for directory in (start, *start.parents):
            if directory not in chain:
                chain.append(directory)
    changed = []
    for directory in chain:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue
        missing = _search_bit(st, user)
        if missing is None:
            continue
        bit, who = missing
        try:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | bit)
        except OSError as e:
            raise EmbeddedPostgresError(
                f"{user.name} cannot reach {path}: {directory} is not searchable"
                f" and could not be made so ({e.strerror})"
            ) from None
        _log.warn(
            "Added search permission for {who} to {directory} so that {user} can reach"
            " {path} (search only, not read)",
            who=who, directory=str(directory), user=user.name, path=str(path),
        )
        changed.append(directory)
    return changed


def prepare_cluster_dirs(data_dir: Path | str, user: RunAs,
                         bindir: Path | None = None) -> ClusterLayout:
    """
    Create and check the directories the cluster needs (blocking, but only
    small file-system calls): the data directory, the private socket
    directory, search permission for C{user} down to the cluster, the socket
    directory and the binaries; an existing cluster must belong to C{user}.
    The cluster itself is not created (see L{run_initdb_sync}).
    """
    layout = layout_for(data_dir)
    try:
        layout.data_dir.mkdir(parents=True, exist_ok=True,
                              mode=0o711 if user.switch else 0o700)
        private_dir(layout.socket_dir, user)
        if layout.pgdata.exists():
            st = os.lstat(layout.pgdata)
            if not stat.S_ISDIR(st.st_mode):
                raise EmbeddedPostgresError(f"{layout.pgdata} is not a directory")
            if st.st_uid != user.uid:
                raise EmbeddedPostgresError(
                    f"the cluster {layout.pgdata} belongs to uid {st.st_uid}, but PostgreSQL"
                    f" runs as {user.name} (uid {user.uid}); run"
                    f" 'chown -R {user.name}: {layout.pgdata}' or set embedded.run_as"
                )
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(layout.pgdata, 0o700)
        ensure_traversable(layout.data_dir, user)
        ensure_traversable(layout.socket_dir, user)
        if bindir is not None:
            ensure_traversable(bindir, user)
    except OSError as e:
        raise EmbeddedPostgresError(f"cannot prepare {layout.data_dir}: {e}") from None
    return layout


# -- initdb, server settings, connection strings ------------------------------


def initdb_argv(bindir: Path, pgdata: Path, *, sync: bool = True) -> list[str]:
    """
    The initdb command line: superuser C{veil}, trust on the Unix socket
    (the 0700 socket directory keeps others out), TCP rejected, UTF8, C locale.
    C{sync=False} skips the final fsync (tests).
    """
    argv = [
        str(bindir / "initdb"), "-D", str(pgdata), "-U", SUPERUSER,
        "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C",
        "--no-instructions",
    ]
    if not sync:
        argv.append("--no-sync")
    return argv


def run_initdb_sync(bindir: Path, pgdata: Path, user: RunAs, *, sync: bool = True,
                    timeout: float = 300.0) -> None:
    """
    Create a cluster in C{pgdata} (made a private directory of C{user} first;
    it must be empty), running initdb as C{user}.  Blocks.

    @raise EmbeddedPostgresError: with the tail of initdb's output.
    """
    private_dir(pgdata, user)
    try:
        done = subprocess.run(
            initdb_argv(bindir, pgdata, sync=sync), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/", env=_child_env(),
            timeout=timeout, check=False, **user.subprocess_kwargs(),
        )
    except subprocess.TimeoutExpired as e:
        raise EmbeddedPostgresError(f"initdb took more than {timeout:g} s:\n"
                                    f"{_tail(e.output or b'')}") from None
    if done.returncode != 0:
        raise EmbeddedPostgresError(
            f"initdb failed (exit status {done.returncode}):\n{_tail(done.stdout)}"
        )


def server_settings(socket_dir: Path, *, fsync: bool = True, max_connections: int = 100,
                    shared_buffers: str = "128MB",
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The server settings Veil passes as C{-c} options: no TCP, our socket
    directory, port 5432 (it only names the socket), 128 MB of shared buffers.
    """
    settings = {
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
        "port": str(PORT),
        "max_connections": str(max_connections),
        "shared_buffers": shared_buffers,
        "log_line_prefix": "%m [%p] ",
        "log_timezone": "UTC",
    }
    if not fsync:
        # Not synchronous_commit=off: an immediate stop (a crash of the
        # server, not of the machine) must not lose committed transactions.
        settings.update(fsync="off", full_page_writes="off")
    settings.update(extra or {})
    return settings


def settings_argv(settings: Mapping[str, str]) -> list[str]:
    """C{-c name=value} arguments for postgres."""
    argv: list[str] = []
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    return argv


def _quote_conninfo(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def socket_conninfo(socket_dir: Path, dbname: str = DATABASE, user: str = SUPERUSER) -> str:
    """A libpq connection string for a server on the socket in C{socket_dir}."""
    return (f"host={_quote_conninfo(str(socket_dir))} user={_quote_conninfo(user)}"
            f" dbname={_quote_conninfo(dbname)}")


def conninfo_for(data_dir: Path | str, dbname: str = DATABASE) -> str:
    """
    A libpq connection string for the embedded cluster under C{data_dir}:
    C{host=<socket dir> user=veil dbname=veil}.
    """
    return socket_conninfo(socket_dir_for(data_dir), dbname)


def pg_ctl_sync(pgdata: Path | str, args: list[str], *, bindir: Path | None = None,
                run_as: str | None = None, timeout: float = 90.0) -> str:
    """
    Run C{pg_ctl -D pgdata args…} as the cluster's user (blocking): for the
    command line, tests and operators' tools, never the reactor thread.  The
    binaries are found as by L{find_bindir}.

    @return: pg_ctl's output.
    @raise EmbeddedPostgresError: if pg_ctl fails, with its output.
    """
    user = run_as_user(run_as)
    argv = [str(find_bindir(bindir) / "pg_ctl"), "-D", str(pgdata), *args]
    # Output to a file, not a pipe: a server pg_ctl starts must not hold our pipe.
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, cwd="/", env=_child_env(),
                                  timeout=timeout, check=False, **user.subprocess_kwargs())
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(
                f"pg_ctl {' '.join(args)} took more than {timeout:g} s") from None
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    if done.returncode != 0:
        raise EmbeddedPostgresError(
            f"pg_ctl {' '.join(args)} failed (exit status {done.returncode}):\n{_tail(output)}")
    return output


# -- who supervises the cluster ---------------------------------------------------


def supervisor_pid(data_dir: Path | str) -> int | None:
    """
    The pid of the Veil process that supervises the embedded cluster under
    C{data_dir} (it holds the C{flock} on the cluster's lock file), or
    L{None} when no process does: Veil is not running on this data
    directory.

    Only looks: taking the lock, even for an instant, could make a Veil
    starting at that moment fail.  The holder is found in C{/proc/locks};
    where that cannot be read, the pid the holder wrote into the file
    counts if that process is alive.
    """
    path = layout_for(data_dir).lock_file
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            written = f.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    holders = _flock_holders(st)
    if holders is not None:
        return holders[0] if holders else None
    pid = int(written) if written.isdigit() else 0
    return pid if pid_alive(pid) else None


def _flock_holders(st: os.stat_result) -> list[int] | None:
    """
    The pids holding a C{flock} on the file C{st} describes, from
    C{/proc/locks}; L{None} if that cannot be read.
    """
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    holders = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            holders.append(int(fields[4]) if fields[4].isdigit() else 0)
    return holders


# -- stale state --------------------------------------------------------------


@attrs.frozen
class PostmasterPid:
    """The lines of C{postmaster.pid} that matter."""

    pid: int
    data_dir: str
    status: str


def read_postmaster_pid(pgdata: Path) -> PostmasterPid | None:
    """Parse C{PGDATA/postmaster.pid}, or L{None} if absent or unreadable."""
    try:
        with open(pgdata / "postmaster.pid", "rb") as f:
            lines = f.read(4096).decode("utf-8", "replace").split("\n")
    except OSError:
        return None
    try:
        pid = int(lines[0].strip())
    except (ValueError, IndexError):
        pid = 0
    data_dir = lines[1] if len(lines) > 1 else ""
    status = lines[7].strip() if len(lines) > 7 else ""
    return PostmasterPid(pid, data_dir, status)


def pid_alive(pid: int) -> bool:
    """Whether a process C{pid} exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _is_postgres(pid: int) -> tuple[bool, list[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return False, []
    try:
        program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        program = os.path.basename(args[0]) if args else ""
    return program.split(" ")[0] in ("postgres", "postmaster"), args


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_postmaster_for(pid: int, pgdata: Path) -> bool:
    """Whether C{pid} is a live PostgreSQL server whose data directory is C{pgdata}."""
    if not pid_alive(pid):
        return False
    postgres, args = _is_postgres(pid)
    if not postgres:
        return False
    try:
        # The postmaster works in its data directory.
        return _same_dir(os.readlink(f"/proc/{pid}/cwd"), pgdata)
    except OSError:
        pass
    for i, arg in enumerate(args):
        if arg == "-D" and i + 1 < len(args):
            return _same_dir(args[i + 1], pgdata)
        if arg.startswith("-D") and len(arg) > 2:
            return _same_dir(arg[2:], pgdata)
    return False


def clear_stale_socket_lock(socket_dir: Path) -> bool:
    """
    Remove C{.s.PGSQL.5432.lock} from C{socket_dir} when the process it
    names is gone or is not PostgreSQL.  Returns whether it was removed.
    """
    lock = socket_dir / f".s.PGSQL.{PORT}.lock"
    try:
        with open(lock, "rb") as f:
            first = f.readline().strip()
    except OSError:
        return False
    try:
        pid = int(first)
    except ValueError:
        pid = 0
    if pid_alive(pid) and _is_postgres(pid)[0]:
        return False
    try:
        lock.unlink()
    except FileNotFoundError:
        return False
    _log.info("Removed stale socket lock {path} (pid {pid} is not running PostgreSQL)",
              path=str(lock), pid=pid)
    return True


# -- child processes ----------------------------------------------------------


def _child_env() -> dict[str, str]:
    """A small, predictable environment (no PG* variables from ours)."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "LC_ALL": "C", "LANG": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def _tail(data: bytes | str, limit: int = _TAIL_BYTES) -> str:
    if isinstance(data, bytes):
        data = data[-limit:].decode("utf-8", "replace")
    return data[-limit:].strip()


def describe_exit(reason: Failure) -> str:
    """"exited with status N" or "was killed by signal N"."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return f"ended ({value})"


def restart_delay(failures: int, max_delay: float = 30.0) -> float:
    """Back-off before restart number C{failures} of a series: 0.5 s, doubling, capped."""
    return min(max_delay, 0.5 * 2 ** max(0, failures - 1))


def _exit_ok(reason: Failure) -> bool:
    return isinstance(reason.value, ProcessDone)


class _ChildProcess(ProcessProtocol):
    """
    A child process we wait for: keeps the tail of its output (when it has
    pipes), tells every waiter when it ends, and calls C{on_end}.
    """

    def __init__(self, name: str, on_end: Callable[[_ChildProcess], None] | None = None) -> None:
        self.name = name
        self.pid: int | None = None
        self.ended: Failure | None = None
        self.on_end = on_end
        self._output = bytearray()
        self._waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output += data
        del self._output[:-_TAIL_BYTES]

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.on_end is not None:
            self.on_end(self)

    @property
    def output(self) -> str:
        return _tail(bytes(self._output))

    def when_ended(self) -> Deferred[None]:
        """
        A new Deferred that fires (never fails) once the process has ended;
        the reason is then in L{ended}.  (A Deferred fired with a L{Failure}
        would count as failed, so it carries nothing.)
        """
        if self.ended is not None:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def signal(self, name: str) -> None:
        if self.ended is None and self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except (ProcessExitedAlready, OSError):
                pass


# -- the service --------------------------------------------------------------


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.define(eq=False)
class EmbeddedPostgres(Service):
    """
    Veil's private PostgreSQL cluster, run as a supervised child process.

    L{startService} begins start-up (binaries, directories, stale state,
    C{initdb} on the first run, the postmaster, the C{veil} database);
    L{when_ready} tells each caller when it can connect.  If the postmaster
    exits while the service runs, it is restarted after a back-off of 0.5 s
    doubling to 30 s.  A failed I{first} start is final: L{when_ready}
    fails with L{EmbeddedPostgresError} and nothing is retried.

    @ivar reactor: provides C{IReactorProcess}, C{IReactorTime} and
        C{IReactorThreads} (a one-off connection on its thread pool creates
        the C{veil} database).
    @ivar fsync: C{False} skips initdb's sync and runs the server with
        C{fsync=off} (tests only: a crash of the machine loses data).
    @ivar settings: extra server settings (C{-c name=value}).
    @ivar phase: C{new}, C{starting}, C{ready}, C{restarting}, C{failed},
        C{stopping} or C{stopped}.
    @ivar restarts: how many times the postmaster was started again.
    @ivar last_error: what went wrong last, for C{/health}.
    @ivar created_cluster: whether this instance ran initdb.

    C{running} keeps its L{twisted.application.service.IService} meaning
    (started and not yet stopped); L{postmaster_running} and L{pid} say
    whether the server itself is up.
    """

    data_dir: Path = attrs.field(converter=_absolute)
    bindir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    reactor: Any = attrs.field(kw_only=True)
    run_as: str | None = None
    start_timeout: float = attrs.field(default=60.0, validator=_positive)
    stop_timeout: float = attrs.field(default=20.0, validator=_positive)
    initdb_timeout: float = attrs.field(default=300.0, validator=_positive)
    fsync: bool = True
    max_connections: int = 100
    shared_buffers: str = "128MB"
    settings: Mapping[str, str] = attrs.field(factory=dict)
    max_backoff: float = 30.0
    #: After running this long, a crash counts as the first of a new series.
    stable_after: float = 30.0
    poll_interval: float = 0.05

    phase: str = attrs.field(default="new", init=False)
    restarts: int = attrs.field(default=0, init=False)
    last_error: str | None = attrs.field(default=None, init=False)
    created_cluster: bool = attrs.field(default=False, init=False)
    found_bindir: Path | None = attrs.field(default=None, init=False)
    user: RunAs | None = attrs.field(default=None, init=False)
    layout: ClusterLayout = attrs.field(init=False)

    _child: _ChildProcess | None = attrs.field(default=None, init=False)
    _helper: _ChildProcess | None = attrs.field(default=None, init=False)
    _task: Deferred[None] | None = attrs.field(default=None, init=False)
    _restart_call: Any = attrs.field(default=None, init=False)
    _waiters: list[Deferred[str]] = attrs.field(factory=list, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _ready_since: float = attrs.field(default=0.0, init=False)
    _log_offset: int = attrs.field(default=0, init=False)
    _lock_fd: int | None = attrs.field(default=None, init=False)
    _stopping: bool = attrs.field(default=False, init=False)

    _log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        self.layout = layout_for(self.data_dir)

    # -- status ----------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        """How to connect to the C{veil} database (valid once ready)."""
        return self.layout.conninfo

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        child = self._child
        return child.pid if child is not None and child.ended is None else None

    @property
    def postmaster_running(self) -> bool:
        """Whether the postmaster is up and accepting connections."""
        return self.phase == "ready" and self.pid is not None

    def status(self) -> dict[str, Any]:
        """The cluster's state for C{/health}."""
        return {
            "phase": self.phase,
            "running": self.postmaster_running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "pgdata": str(self.layout.pgdata),
            "bindir": str(self.found_bindir) if self.found_bindir else None,
        }

    def when_ready(self) -> Deferred[str]:
        """
        A new Deferred for each caller that fires with the connection string
        once the server accepts connections, or fails with
        L{EmbeddedPostgresError} if the first start fails or the service
        stops first.  During a restart it waits for the next start.
        """
        if self.phase == "ready" and self.pid is not None:
            return succeed(self.conninfo)
        if self.phase in ("failed", "stopping", "stopped"):
            reason = self.last_error if self.phase == "failed" else "it was stopped"
            return fail(EmbeddedPostgresError(
                f"the embedded PostgreSQL cluster is not running: {reason}"))
        d: Deferred[str] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def _fire_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.conninfo)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(Failure(error))

    # -- start -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.phase = "starting"
        self._task = Deferred.fromCoroutine(self._first_start())
        self._task.addErrback(self._task_failed)

    def _task_failed(self, failure: Failure) -> None:
        if self._stopping and failure.check(CancelledError, EmbeddedPostgresError, OSError):
            return
        self._log.failure("Embedded PostgreSQL task failed", failure)

    async def _first_start(self) -> None:
        try:
            self.found_bindir = await _find_bindir_async(self.bindir, self.reactor)
            self.user = run_as_user(self.run_as)
            self.layout = prepare_cluster_dirs(self.data_dir, self.user, self.found_bindir)
            self._take_lock()
            if not (self.layout.pgdata / "PG_VERSION").exists():
                await self._initdb()
            await self._start_postmaster()
        except Exception as e:
            if self._stopping:
                raise
            if isinstance(e, EmbeddedPostgresError):
                error = e
            elif isinstance(e, OSError):
                error = EmbeddedPostgresError(f"embedded PostgreSQL: {e}")
            else:
                self._log.failure("Unexpected error starting the embedded PostgreSQL cluster")
                error = EmbeddedPostgresError(f"embedded PostgreSQL: {e!r}")
            self.phase = "failed"
            self.last_error = str(error)
            self._log.error("The embedded PostgreSQL cluster could not start: {error}",
                            error=str(error))
            self._release_lock()
            self._fail_waiters(error)

    def _take_lock(self) -> None:
        path = self.layout.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EmbeddedPostgresError(
                    f"the embedded cluster in {self.layout.data_dir} is already supervised"
                    f" by another process (pid {holder})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _clear_stale_state(self) -> None:
        pgdata = self.layout.pgdata
        info = read_postmaster_pid(pgdata)
        if info is not None:
            if not pid_alive(info.pid):
                self._log.info("Removing stale {path}: pid {pid} is not running",
                               path=str(pgdata / "postmaster.pid"), pid=info.pid)
                _unlink(pgdata / "postmaster.pid")
            elif not is_postmaster_for(info.pid, pgdata):
                self._log.warn(
                    "Removing stale {path}: pid {pid} is not a PostgreSQL server for this cluster",
                    path=str(pgdata / "postmaster.pid"), pid=info.pid)
                _unlink(pgdata / "postmaster.pid")
            else:
                self._log.warn("Stopping orphaned PostgreSQL server (pid {pid}) on {pgdata},"
                               " left by an earlier run", pid=info.pid, pgdata=str(pgdata))
                await self._stop_orphan(info.pid)
                if read_postmaster_pid(pgdata) is not None and not pid_alive(info.pid):
                    _unlink(pgdata / "postmaster.pid")
        clear_stale_socket_lock(self.layout.socket_dir)

    async def _stop_orphan(self, pid: int) -> None:
        for signame, wait in (("SIGINT", self.stop_timeout), ("SIGQUIT", 10.0),
                              ("SIGKILL", 10.0)):
            try:
                os.kill(pid, getattr(signal, signame))
            except ProcessLookupError:
                return
            except PermissionError:
                raise EmbeddedPostgresError(
                    f"an orphaned PostgreSQL server (pid {pid}) runs on"
                    f" {self.layout.pgdata} and cannot be stopped by this user"
                ) from None
            if await self._gone_within(pid, wait):
                self._log.info("Orphaned PostgreSQL server (pid {pid}) stopped", pid=pid)
                return
            self._log.warn("Orphaned PostgreSQL server (pid {pid}) still runs after {signal}",
                           pid=pid, signal=signame)
        raise EmbeddedPostgresError(f"could not stop the orphaned PostgreSQL server (pid {pid})")

    async def _gone_within(self, pid: int, seconds: float) -> bool:
        deadline = self.reactor.seconds() + seconds
        while pid_alive(pid):
            if self.reactor.seconds() >= deadline:
                return False
            await deferLater(self.reactor, self.poll_interval, lambda: None)
        return True

    def _spawn(self, protocol: _ChildProcess, argv: list[str],
               child_fds: dict[int, Any] | None = None) -> None:
        assert self.user is not None
        uid, gid = self.user.spawn_ids()
        self.reactor.spawnProcess(protocol, argv[0], argv, env=_child_env(), path="/",
                                  uid=uid, gid=gid, childFDs=child_fds)

    async def _initdb(self) -> None:
        assert self.user is not None and self.found_bindir is not None
        layout = self.layout
        if layout.pgdata.exists():
            if any(layout.pgdata.iterdir()):
                raise EmbeddedPostgresError(
                    f"{layout.pgdata} exists but is not a PostgreSQL cluster (no PG_VERSION);"
                    " move it away to let Veil create a new cluster"
                )
            layout.pgdata.rmdir()
        if layout.initdb_dir.exists():
            # Left by an interrupted initdb: never a usable cluster.
            shutil.rmtree(layout.initdb_dir)
        private_dir(layout.initdb_dir, self.user)
        self._log.info("Creating the PostgreSQL cluster in {pgdata} (first run, as {user})",
                       pgdata=str(layout.pgdata), user=self.user.name)
        helper = self._helper = _ChildProcess("initdb")
        self._spawn(helper, initdb_argv(self.found_bindir, layout.initdb_dir, sync=self.fsync))
        helper.transport.closeStdin()
        try:
            if not await self._ended_within(helper, self.initdb_timeout):
                helper.signal("KILL")
                await helper.when_ended()
                raise EmbeddedPostgresError(
                    f"initdb took more than {self.initdb_timeout:g} s:\n{helper.output}")
        finally:
            if helper.ended is not None:
                self._helper = None
        assert helper.ended is not None
        if not _exit_ok(helper.ended):
            raise EmbeddedPostgresError(
                f"initdb {describe_exit(helper.ended)}:\n{helper.output}")
        os.rename(layout.initdb_dir, layout.pgdata)
        self.created_cluster = True

    async def _ended_within(self, child: _ChildProcess, seconds: float) -> bool:
        ended = child.when_ended()
        ended.addTimeout(seconds, self.reactor)
        try:
            await ended
        except DeferredTimeout:
            return False
        return True

    def _open_log(self) -> int:
        path = self.layout.log_file
        try:
            if path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(path, path.with_name(path.name + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._log_offset = os.fstat(fd).st_size
        return fd

    def _log_tail(self) -> str:
        """What the server logged since it was last started (the end of it)."""
        try:
            with open(self.layout.log_file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(self._log_offset, size - _TAIL_BYTES))
                return _tail(f.read(_TAIL_BYTES)) or "(nothing logged)"
        except OSError as e:
            return f"(cannot read {self.layout.log_file}: {e.strerror})"

    def postmaster_argv(self) -> list[str]:
        """The postmaster's command line (C{setsid} first when available)."""
        assert self.found_bindir is not None
        settings = server_settings(
            self.layout.socket_dir, fsync=self.fsync, max_connections=self.max_connections,
            shared_buffers=self.shared_buffers, extra=self.settings,
        )
        argv = [str(self.found_bindir / "postgres"), "-D", str(self.layout.pgdata),
                *settings_argv(settings)]
        # Its own session: a terminal's Ctrl-C reaches Veil, which then stops
        # the server in order.  setsid execs in place (same pid): the child
        # of a fork is never a process group leader.
        setsid = shutil.which("setsid")
        return [setsid, *argv] if setsid else argv

    async def _start_postmaster(self) -> None:
        """Start the postmaster and wait until it serves the C{veil} database."""
        await self._clear_stale_state()
        log_fd = self._open_log()
        null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        child = _ChildProcess("postgres", on_end=self._postmaster_ended)
        try:
            self._spawn(child, self.postmaster_argv(), {0: null_fd, 1: log_fd, 2: log_fd})
        finally:
            os.close(log_fd)
            os.close(null_fd)
        self._child = child
        self._log.info("Started PostgreSQL (pid {pid}) on {socket_dir}",
                       pid=child.pid, socket_dir=str(self.layout.socket_dir))
        try:
            await self._wait_ready(child)
            created = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                              _create_database, self.layout)
        except Exception:
            if not self._stopping and child.ended is None:
                child.signal("QUIT")
                if not await self._ended_within(child, 10.0):
                    child.signal("KILL")
                    await child.when_ended()
            raise
        if created:
            self._log.info("Created database {database}", database=DATABASE)
        self.phase = "ready"
        self._ready_since = self.reactor.seconds()
        self._log.info("PostgreSQL (pid {pid}) is ready", pid=child.pid)
        self._fire_waiters()

    async def _wait_ready(self, child: _ChildProcess) -> None:
        deadline = self.reactor.seconds() + self.start_timeout
        while True:
            if child.ended is not None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL {describe_exit(child.ended)} before it was ready;"
                    f" its log ({self.layout.log_file}) ends with:\n{self._log_tail()}")
            info = read_postmaster_pid(self.layout.pgdata)
            if info is not None and info.pid == child.pid and info.status == "ready":
                return
            if self.reactor.seconds() >= deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL was not ready within {self.start_timeout:g} s;"
                    f" its log ({self.layout.log_file}) ends with:\n{self._log_tail()}")
            await deferLater(self.reactor, self.poll_interval, lambda: None)

    # -- supervision -----------------------------------------------------------

    def _postmaster_ended(self, child: _ChildProcess) -> None:
        if child is not self._child:
            return
        self._child = None
        if self._stopping or self.phase != "ready":
            # Stopping, or still starting: the start-up code reports it.
            return
        assert child.ended is not None
        now = self.reactor.seconds()
        if now - self._ready_since >= self.stable_after:
            self._failures = 0
        self.last_error = f"PostgreSQL (pid {child.pid}) {describe_exit(child.ended)}"
        self._log.error("{error}; its log ends with:\n{tail}", error=self.last_error,
                        tail=self._log_tail())
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        self._failures += 1
        delay = restart_delay(self._failures, self.max_backoff)
        self.phase = "restarting"
        self._log.info("Restarting PostgreSQL in {delay:.1f} s", delay=delay)
        self._restart_call = self.reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        self.restarts += 1
        self._task = Deferred.fromCoroutine(self._start_postmaster())
        self._task.addErrback(self._restart_failed)

    def _restart_failed(self, failure: Failure) -> None:
        if self._stopping:
            failure.trap(CancelledError, EmbeddedPostgresError, OSError)
            return
        if failure.check(EmbeddedPostgresError, OSError):
            self.last_error = str(failure.value)
            self._log.error("Restarting PostgreSQL failed: {error}", error=self.last_error)
        else:
            self.last_error = repr(failure.value)
            self._log.failure("Restarting PostgreSQL failed", failure)
        self._schedule_restart()

    # -- stop ------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop the server (fast shutdown); fires once the postmaster has exited."""
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.phase = "stopping"
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self._task is not None and not self._task.called:
            self._task.cancel()
        helper = self._helper
        if helper is not None:
            helper.signal("TERM")
            if not await self._ended_within(helper, self.stop_timeout):
                helper.signal("KILL")
                await helper.when_ended()
            self._helper = None
        child = self._child
        if child is not None and child.ended is None:
            self._log.info("Stopping PostgreSQL (pid {pid})", pid=child.pid)
            child.signal("INT")
            if not await self._ended_within(child, self.stop_timeout):
                self._log.warn("PostgreSQL (pid {pid}) did not stop within {timeout:g} s;"
                               " sending SIGQUIT", pid=child.pid, timeout=self.stop_timeout)
                child.signal("QUIT")
                if not await self._ended_within(child, 10.0):
                    child.signal("KILL")
                    await child.when_ended()
            self._log.info("PostgreSQL stopped")
        self._child = None
        self.phase = "stopped"
        self._fail_waiters(EmbeddedPostgresError("the embedded PostgreSQL cluster was stopped"))
        self._release_lock()
        if self.layout.socket_dir.parent == Path("/tmp"):
            try:
                self.layout.socket_dir.rmdir()
            except OSError:
                pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _create_database(layout: ClusterLayout) -> bool:
    """
    Create the C{veil} database if it is missing (runs on a thread, bounded by
    the connect and statement timeouts).  Returns whether it was created.
    """
    try:
        with psycopg.connect(socket_conninfo(layout.socket_dir, "postgres"), autocommit=True,
                             connect_timeout=10, options="-c statement_timeout=60000") as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 (DATABASE,)).fetchone()
            if found is not None:
                return False
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            except psycopg.errors.DuplicateDatabase:
                return False
            return True
    except psycopg.Error as e:
        raise EmbeddedPostgresError(f"cannot create database {DATABASE}: {e}") from None
