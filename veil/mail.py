"""
Outgoing mail: through an SMTP server with STARTTLS, or into an outbox.

L{mailer_for} picks one from the C{smtp.*} keys:

  - L{SmtpMailer}: C{twisted.mail}'s ESMTP client over a
    L{HostnameEndpoint}, with the reactor passed in.  STARTTLS is required
    and the server's certificate is checked against its host name (the
    system's roots, or C{smtp.ca_bundle}); C{smtp.starttls = false} is
    accepted only for a mail server on loopback.  AUTH (CRAM-MD5, LOGIN or
    PLAIN, the strongest the server offers) when C{smtp.username} is set.
  - L{OutboxMailer}, with no C{smtp.host}: every message is written as an
    C{.eml} file (mode 0600) to C{data_dir/outbox/}, and the log says which
    file, which is how the embedded default "sends" mail.

Neither logs an address, a subject or a body: messages carry sign-in
links.  Files are written on a thread, never on the reactor.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from veil.config import SmtpConfig
from veil.errors import VeilError

_log = Logger()

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


#: Lines up to RFC 5322's limit, so that links stay whole and readable (no
#: quoted-printable), also in an outbox file opened in a text editor.
_POLICY = SMTP.clone(max_line_length=998)


class MailError(VeilError):
    """A message could not be handed over; the text names no address."""


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> Deferred[None]:
        """Deliver C{message}; fires when the server (or the outbox) has it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def compose(sender: str, to: str, subject: str, text: str, now: float) -> EmailMessage:
    """A plain-text message with the headers a mail server expects."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "veil.invalid")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return message


class OutboxMailer:
    """Writes each message to C{directory} as an C{.eml} file."""

    def __init__(self, reactor: Any, directory: Path) -> None:
        self.reactor = reactor
        self.directory = directory
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="veil-outbox")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def send(self, message: EmailMessage) -> Deferred[None]:
        when = datetime.fromtimestamp(self.reactor.seconds(), UTC)
        name = f"{when:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}.eml"
        d = deferToThreadPool(self.reactor, self._pool, self._write, name, message.as_bytes())
        d.addCallback(self._written)
        return d

    def _write(self, name: str, data: bytes) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def _written(self, path: Path) -> None:
        _log.info("Mail written to {path} (no mail server is configured: set smtp.host to send)",
                  path=str(path))


class SmtpMailer:
    """Hands each message to one SMTP server."""

    def __init__(self, reactor: Any, config: SmtpConfig) -> None:
        assert config.host is not None and config.sender is not None
        self.reactor = reactor
        self.config = config
        self._tls = None
        if config.starttls:
            trust = None
            if config.ca_bundle is not None:
                pems = _PEM_CERTIFICATE.findall(config.ca_bundle.read_bytes())
                if not pems:
                    raise MailError(f"smtp.ca_bundle {config.ca_bundle} holds no certificate")
                trust = trustRootFromCertificates([Certificate.loadPEM(p) for p in pems])
            self._tls = optionsForClientTLS(config.host, trustRoot=trust)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def send(self, message: EmailMessage) -> Deferred[None]:
        from twisted.mail.smtp import ESMTPSenderFactory

        config = self.config
        done: Deferred[Any] = Deferred()
        username = config.username.encode() if config.username else None
        password = config.password.encode() if config.password else None
        factory = ESMTPSenderFactory(
            username, password, config.sender, [str(message["To"])],
            BytesIO(message.as_bytes()), done, retries=0, timeout=int(config.timeout),
            contextFactory=self._tls, requireAuthentication=username is not None,
            requireTransportSecurity=config.starttls, hostname=config.host)
        endpoint = HostnameEndpoint(self.reactor, config.host, config.port,
                                    timeout=config.timeout)
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda f: done.called or done.errback(f))
        done.addTimeout(config.timeout * 2, self.reactor)
        done.addCallbacks(self._sent, self._failed)
        return done

    def _sent(self, result: Any) -> None:
        _log.info("Mail handed to {host}:{port}", host=self.config.host, port=self.config.port)

    def _failed(self, failure: Any) -> None:
        code = getattr(failure.value, "code", None)
        raise MailError(f"the mail server {self.config.host}:{self.config.port} did not take"
                        f" the message ({type(failure.value).__name__}"
                        f"{'' if code is None else f', SMTP {code}'})")


def mailer_for(reactor: Any, config: SmtpConfig, data_dir: Path) -> Mailer:
    """The mailer the configuration asks for."""
    if config.host is None:
        return OutboxMailer(reactor, data_dir / "outbox")
    return SmtpMailer(reactor, config)
