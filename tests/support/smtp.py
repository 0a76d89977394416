"""
A real SMTP server on loopback for tests, written with C{twisted.mail}:
ESMTP with STARTTLS (a certificate for C{localhost} from a throwaway
internal CA, whose root the client is told to trust through
C{smtp.ca_bundle}) and AUTH LOGIN against one user.  It keeps
every message it accepts, and whether it arrived over TLS and after AUTH.
"""

from __future__ import annotations

import email
from email.message import Message
from pathlib import Path
from typing import Any

import attrs
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer

from veil.acme.internal_ca import InternalCA
from veil.edge.keys import generate_key


@attrs.define
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    authenticated: bool

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.data)

    @property
    def text(self) -> str:
        payload = self.message.get_payload(decode=True)
        return payload.decode("utf-8") if isinstance(payload, bytes) else str(payload)


@implementer(IMessageSMTP)
class _Message:
    def __init__(self, server: SmtpServer, protocol: Any, sender: str,
                 recipients: list[str]) -> None:
        self.server, self.protocol = server, protocol
        self.sender, self.recipients = sender, recipients
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[bytes]:
        received = Received(self.sender, list(self.recipients), b"\n".join(self.lines) + b"\n",
                            bool(self.protocol.startedTLS), bool(self.protocol.authenticated))
        self.server.messages.append(received)
        waiting, self.server.waiting = self.server.waiting, []
        for d in waiting:
            d.callback(received)
        return defer.succeed(b"queued")

    def connectionLost(self) -> None:
        self.lines = []


@implementer(IMessageDelivery)
class _Delivery:
    def __init__(self, server: SmtpServer, protocol: Any) -> None:
        self.server, self.protocol = server, protocol
        self.sender = ""
        self.recipients: list[str] = []

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: from veil-test"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        if self.server.require_auth and not self.protocol.authenticated:
            raise smtp.SMTPBadSender(origin, 530, b"Authentication required")
        self.sender = str(origin)
        self.recipients = []
        return origin

    def validateTo(self, user: Any) -> Any:
        self.recipients.append(str(user.dest))
        return lambda: _Message(self.server, self.protocol, self.sender, self.recipients)


class _Protocol(smtp.ESMTP):
    """ESMTP with STARTTLS, and AUTH only once TLS is up."""

    def __init__(self, server: SmtpServer, context: Any) -> None:
        super().__init__(contextFactory=context)
        self.server = server
        self.challengers = {b"LOGIN": smtp.LOGINCredentials}
        self.portal = server.portal
        self.delivery = _Delivery(server, self)

    def ext_AUTH(self, rest: bytes) -> None:
        if not self.startedTLS:
            self.sendCode(538, b"Encryption required for requested authentication mechanism")
            return
        super().ext_AUTH(rest)

    def _cbAuthenticated(self, loginInfo: Any) -> Any:
        result = super()._cbAuthenticated(loginInfo)
        self.delivery = _Delivery(self.server, self)
        return result


@implementer(IRealm)
class _Realm:
    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return IMessageDelivery, None, lambda: None


class SmtpServer:
    """
    @ivar messages: what was accepted, in order.
    @ivar ca_bundle: the PEM root to trust (C{smtp.ca_bundle}).
    """

    def __init__(self, directory: Path, username: str = "veil", password: str = "mail-secret",
                 require_auth: bool = True) -> None:
        self.messages: list[Received] = []
        self.waiting: list[defer.Deferred[Received]] = []
        self.username, self.password = username, password
        self.require_auth = require_auth
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(username.encode(), password.encode())
        self.portal = Portal(_Realm(), [checker])
        ca = InternalCA.load_or_create(directory, reactor)
        key = generate_key("ecdsa-p256")
        issued = ca.issue("localhost", key)
        self.ca_bundle = directory / "ca.crt"
        self._context = PrivateCertificate.loadPEM(key + issued.chain_pem).options()
        self.port: Any = None

    def start(self) -> None:
        server = self

        class Factory(smtp.SMTPFactory):
            def buildProtocol(self, addr: Any) -> Any:
                protocol = _Protocol(server, server._context)
                protocol.factory = self
                return protocol

        self.port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")

    def stop(self) -> Any:
        return self.port.stopListening()

    @property
    def address(self) -> tuple[str, int]:
        return "localhost", self.port.getHost().port

    def env(self, sender: str = "veil@example.test") -> dict[str, str]:
        """The C{VEIL_SMTP_*} settings that send Veil's mail here."""
        return {"VEIL_SMTP_HOST": "localhost", "VEIL_SMTP_PORT": str(self.port.getHost().port),
                "VEIL_SMTP_USERNAME": self.username, "VEIL_SMTP_PASSWORD": self.password,
                "VEIL_SMTP_SENDER": sender, "VEIL_SMTP_CA_BUNDLE": str(self.ca_bundle),
                "VEIL_SMTP_TIMEOUT": "10"}

    def next_message(self) -> defer.Deferred[Received]:
        """Fires with the next message accepted."""
        d: defer.Deferred[Received] = defer.Deferred()
        self.waiting.append(d)
        return d
