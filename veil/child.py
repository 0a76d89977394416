"""
C{python -m veil.child}: one of the extra Veil processes the main process
starts when C{processes.workers} is above 1 (see L{veil.processes}).

Not for operators: the main process gives it its number, its listening
sockets, its control pipe and the database to use (C{VEIL_DATABASE_URL}),
and it runs a full L{VeilService} on them until SIGTERM, SIGINT, or the
end of its control pipe.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet import fdesc
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.reflect import namedAny

from veil import config as veil_config
from veil.errors import ConfigError
from veil.logs import route_stdlib_logging
from veil.processes import CONTROL_FD

_log = Logger()


class _ParentWatch:
    """Stops the reactor when standard input (the main process's pipe) closes."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._gone = False
        fdesc.setNonBlocking(0)

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent-watch"

    def doRead(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            self.connectionLost(None)

    def connectionLost(self, reason: object) -> None:
        # The reactor calls this itself when the pipe hangs up.
        if not self._gone:
            self._gone = True
            _log.warn("The main Veil process went away; stopping")
            self.reactor.callLater(0, _stop, self.reactor)


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def _tagged(observer: Any, index: int) -> Any:
    def observe(event: dict) -> None:
        event = dict(event)
        event["veil_process"] = index
        if "log_system" not in event:
            level = event.get("log_level")
            event["log_system"] = "{}#{} p{}".format(
                event.get("log_namespace", "-"), getattr(level, "name", "-"), index)
        else:
            event["log_system"] = f"{event['log_system']} p{index}"
        observer(event)

    return observe


def _socket(value: str) -> tuple[str, int]:
    name, _, fd = value.partition("=")
    if not name or not fd.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=FD")
    return name, int(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="veil.child", description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--logger", default=None)
    parser.add_argument("--socket", type=_socket, action="append", default=[])
    args = parser.parse_args(argv)

    observer = namedAny(args.logger)() if args.logger else textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([_tagged(observer, args.index)], redirectStandardIO=False)
    try:
        config = veil_config.load(args.config)
    except ConfigError as e:
        _log.critical("Veil process {index}: configuration error: {error}", index=args.index,
                      error=e)
        return 1

    from veil.reactor import install_if_free

    install_if_free()
    from twisted.internet import reactor

    from veil.service import ProcessRole, VeilService
    from veil.tap import exit_on_request, resolve_names_on_own_threads, stop_cleanly_on_signals

    status: list[int] = []
    request_exit = exit_on_request(reactor, status)
    role = ProcessRole(index=args.index, sockets=dict(args.socket), control_fd=CONTROL_FD)
    service = VeilService(config, reactor, request_exit, role=role)
    resolve_names_on_own_threads(reactor)
    route_stdlib_logging(reactor)
    reactor.addReader(_ParentWatch(reactor))
    reactor.callWhenRunning(stop_cleanly_on_signals, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    service.privilegedStartService()
    reactor.callWhenRunning(service.startService)
    reactor.run()
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
