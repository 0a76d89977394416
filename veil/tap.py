"""
C{twistd veil}: options and the service maker.

The whole configuration is loaded and validated in L{Options.postOptions},
before the reactor starts and before anything is bound: a bad value stops
C{twistd} with a message naming the key and a non-zero exit status.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet._resolver import GAIResolver
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.python import usage

from veil import config as veil_config
from veil.errors import ConfigError, EmbeddedPostgresError
from veil.logs import route_stdlib_logging

_log = Logger()


class Options(usage.Options):
    """Command line of C{twistd veil}."""

    synopsis = "[--config PATH]"
    longdesc = (
        "Run Veil. With no configuration it runs on its embedded defaults, on loopback only: "
        "edge TLS on 127.0.0.1:8443, plain HTTP on 127.0.0.1:8080, the dashboard on "
        "http://127.0.0.1:8081, a private PostgreSQL cluster and its data in ./veil-data. "
        "VEIL_* environment variables override single keys (VEIL_DATABASE_URL, VEIL_DATA_DIR, "
        "VEIL_DASHBOARD_PORT, ...)."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (also VEIL_CONFIG)."],
        ["workers", "w", None,
         "Veil processes sharing the ports: a number, or auto for one per CPU"
         " (processes.workers; default 1)."],
    ]

    def postOptions(self) -> None:
        path = self["config"] or os.environ.get("VEIL_CONFIG") or None
        try:
            self.config = veil_config.load(path)
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None
        if self["workers"] is not None:
            try:
                workers = veil_config.process_count(self["workers"])
            except ValueError as e:
                raise usage.UsageError(f"--workers: {e}") from None
            self.config = attrs.evolve(
                self.config, processes=attrs.evolve(self.config.processes, workers=workers))
        self.config_path = path
        from veil.sockets import systemd_sockets

        try:
            # Read once: reading takes LISTEN_FDS out of the environment.
            self.sockets = systemd_sockets()
        except ConfigError as e:
            raise usage.UsageError(f"socket activation: {e}") from None
        if self.config.uses_embedded_database:
            from veil.store.embedded import find_bindir

            try:
                find_bindir(self.config.embedded.bin_dir)
            except EmbeddedPostgresError as e:
                raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    """Build the L{VeilService} for the global reactor."""
    from veil.reactor import install_if_free

    install_if_free()
    from twisted.internet import reactor

    from veil.service import ProcessRole, VeilService

    reactor.callWhenRunning(stop_cleanly_on_signals, reactor)
    resolve_names_on_own_threads(reactor)
    route_stdlib_logging(reactor)
    parent = getattr(options, "parent", None)
    logger = logger_name(parent.get("logger")) if parent is not None else None
    role = ProcessRole(config_path=options.config_path, logger=logger, sockets=options.sockets)
    return VeilService(options.config, reactor, exit_on_request(reactor, []), role=role)


def logger_name(logger: Any) -> str | None:
    """
    The dotted name of C{twistd --logger}'s observer factory, for the other
    Veil processes' command lines: twistd replaces the option's value by
    the object it names.
    """
    if logger is None or isinstance(logger, str):
        return logger
    return f"{logger.__module__}.{logger.__qualname__}"


def exit_on_request(reactor: Any, status: list[int]) -> Any:
    """
    A function that stops the reactor and, once every service has stopped,
    ends the process with the status it is given (the first one wins).

    It may be called before the reactor runs (C{twistd} starts the services
    first, so a start-up step that fails at once fails then): the reactor
    is then stopped as soon as it has started, and the services are
    stopped, ports closed, as on any other stop.
    """
    def request_exit(code: int) -> None:
        if status:
            return
        status.append(code)
        reactor.addSystemEventTrigger("after", "shutdown", _exit_now, status)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return request_exit


def resolve_names_on_own_threads(reactor: Any) -> None:
    """
    Give getaddrinfo a thread pool of its own (as Synapse does), so that
    name lookups never queue behind other work on the reactor's shared pool.
    """
    pool = ThreadPool(minthreads=0, maxthreads=4, name="veil-dns")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    reactor.installNameResolver(GAIResolver(reactor, getThreadPool=lambda: pool))


def stop_cleanly_on_signals(reactor: object) -> None:
    """
    Make SIGTERM and SIGINT stop Veil with exit status 0.

    Twisted's own handlers re-raise the signal once the reactor has stopped,
    so the process dies of SIGTERM; for systemd and for operators a clean,
    complete shutdown is a success.  Runs once the reactor has installed its
    handlers, and replaces those two.
    """
    def stop(number: int, frame: object) -> None:
        _log.info("Received {signal}, shutting down", signal=signal.Signals(number).name)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _exit_now(status: list[int]) -> None:
    # twistd has no way to exit with a status of our choosing once the
    # reactor has run; by now every service has stopped, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status[0])
