"""
Compiled hyperscan databases, kept on disk so that every process that
builds the same engine loads them instead of compiling again (compiling the
package's rules takes seconds; loading them, milliseconds).

A database is filed under the SHA-256 of everything its compilation depends
on: the expressions, their flags, ids and extended parameters, the scan
mode, this module's format and hyperscan's version.  Changed rules (or a
new hyperscan) therefore name another file, and a stale one is simply never
read again (the oldest files beyond L{KEEP} are removed).

The file is written to a temporary name and renamed into place (readers see
the old file or the new one, never half of one), and holds a digest of the
database that is checked before hyperscan reads it.  A file that is
missing, truncated, corrupt, from another hyperscan or another CPU is
recompiled and replaced; a directory that cannot be written only costs the
compilation.  Since hyperscan trusts the bytes it deserialises, a file is
read only from a directory and a file owned by this user that nobody else
can write.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hyperscan
from twisted.logger import Logger

log = Logger()

#: Bumped when what a file holds changes.
FORMAT = 1
MAGIC = b"veil-hyperscan-db\n"
#: Database files kept in a directory (the most recently used).
KEEP = 16
SUFFIX = ".hsdb"


def default_directory() -> Path:
    """The user's cache directory for Veil's WAF (C{$XDG_CACHE_HOME/veil/waf} or C{~/.cache/veil/waf})."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "veil" / "waf"


def cache_key(expressions: Sequence[bytes], flags: Sequence[int], ids: Sequence[int],
              ext: Sequence[tuple[int, ...]], mode: int) -> str:
    """The name of the database these inputs compile to."""
    digest = hashlib.sha256()
    digest.update(f"format {FORMAT}\nhyperscan {hyperscan.__version__}\n"
                  f"extension {_extension_identity()}\nmode {mode}\n".encode())
    for expression, flag, ident, params in zip(expressions, flags, ids, ext, strict=True):
        digest.update(b"%d %d %r\n" % (ident, flag, tuple(params)))
        digest.update(expression)
        digest.update(b"\n")
    return digest.hexdigest()


def _extension_identity() -> str:
    """The size of hyperscan's compiled module: another build of the same version is another file."""
    try:
        return str(os.stat(hyperscan._hs_ext.__file__).st_size)
    except (AttributeError, OSError):
        return "unknown"


class DatabaseCache:
    """A directory of compiled databases."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def load_or_compile(self, key: str, compile_database: Callable[[], tuple[Any, dict]]) -> \
            tuple[Any, dict]:
        """
        The database filed under C{key} and the metadata stored with it, or
        C{compile_database()}'s (a database and JSON-able metadata), which is
        then filed.
        """
        found = self._load(key)
        if found is not None:
            return found
        database, metadata = compile_database()
        self._store(key, database, metadata)
        return database, metadata

    # -- reading -------------------------------------------------------------------------

    def _load(self, key: str) -> tuple[Any, dict] | None:
        path = self.directory / (key + SUFFIX)
        try:
            if not _private(self.directory) or not _private(path):
                return None
            data = path.read_bytes()
        except OSError:
            return None
        try:
            database, metadata = _decode(data)
            # A database built for another CPU deserialises but refuses to scan.
            database.scan(b"\x1e", match_event_handler=_ignore)
        except (ValueError, hyperscan.error) as e:
            _warn(f"WAF database cache: {path.name} is unusable ({e}); compiling again")
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return database, metadata

    # -- writing -------------------------------------------------------------------------

    def _store(self, key: str, database: Any, metadata: dict) -> None:
        payload = hyperscan.dumpb(database)
        header = json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest(),
                             "metadata": metadata}, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not _private(self.directory):
                _warn(f"WAF database cache: {self.directory} is writable by others; not used")
                return
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-",
                                                 suffix=SUFFIX)
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(MAGIC + header + b"\n" + payload)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.directory / (key + SUFFIX))
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as e:
            _warn(f"WAF database cache: cannot write in {self.directory} ({e});"
                  " every process compiles the rules")
            return
        self._prune()

    def _prune(self) -> None:
        """Remove all but the L{KEEP} most recently used files."""
        try:
            files = sorted(((entry.stat().st_mtime, entry) for entry in self.directory.iterdir()
                            if entry.name.endswith(SUFFIX) and not entry.name.startswith(".")),
                           key=lambda item: item[0], reverse=True)
            for _, entry in files[KEEP:]:
                entry.unlink()
        except OSError:
            pass


def _decode(data: bytes) -> tuple[Any, dict]:
    """A file's database and metadata; L{ValueError} if it is not a good file."""
    if not data.startswith(MAGIC):
        raise ValueError("not a database file")
    header, newline, payload = data[len(MAGIC):].partition(b"\n")
    if not newline:
        raise ValueError("truncated")
    try:
        fields = json.loads(header)
    except ValueError:
        raise ValueError("a damaged header") from None
    if not isinstance(fields, dict) or fields.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise ValueError("the database does not match its digest")
    metadata = fields.get("metadata")
    if not isinstance(metadata, dict):
        raise ValueError("no metadata")  # noqa: TRY004 - a bad file, as the others
    database = hyperscan.loadb(payload, hyperscan.HS_MODE_BLOCK)
    database.scratch = hyperscan.Scratch(database)
    return database, metadata


def _private(path: Path) -> bool:
    """Whether C{path} is owned by this user and writable by nobody else."""
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    return not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _ignore(*_: Any) -> None:
    return None


def _warn(message: str) -> None:
    """Once per engine built at most: not on any hot path."""
    log.warn("{message}", message=message)  # noqa: G010 - Twisted's Logger
