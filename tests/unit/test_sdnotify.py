"""Tests for L{veil.sdnotify}."""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from veil.sdnotify import notify


class NotifyTests(SynchronousTestCase):
    """notify() speaks systemd's datagram protocol, and is silent outside systemd."""

    def test_sends_datagram(self) -> None:
        """The state is sent as one datagram to NOTIFY_SOCKET."""
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(server.close)
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(server.recv(100), b"READY=1")

    def test_abstract_socket(self) -> None:
        """A name starting with @ is an abstract-namespace socket."""
        name = f"veil-test-{os.getpid()}"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind("\0" + name)
        self.addCleanup(server.close)
        self.assertTrue(notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(server.recv(100), b"STOPPING=1")

    def test_no_socket(self) -> None:
        """Outside systemd nothing is sent."""
        self.assertFalse(notify("READY=1", {}))

    def test_socket_gone(self) -> None:
        """A socket that does not exist is not an error."""
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))
