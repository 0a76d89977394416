"""L{veil.proxy.headers}: the request ids the proxy makes."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from veil.proxy.headers import RequestIds


class RequestIdsTests(SynchronousTestCase):
    """Request ids: a random per-process prefix and a counter, 32 hex digits."""

    def test_shape_and_order(self) -> None:
        """
        Ids are 32 lower-case hex digits: the process's 16-digit prefix and
        the counter, zero-padded, from 1 up; each is new.
        """
        ids = RequestIds()
        made = [ids() for _ in range(300)]
        prefix = made[0][:16]
        self.assertEqual(made[0], prefix + "0000000000000001")
        self.assertEqual(made[255], prefix + "0000000000000100")
        for number, rid in enumerate(made, 1):
            self.assertRegex(rid, re.compile(r"\A[0-9a-f]{32}\Z"))
            self.assertEqual((rid[:16], int(rid[16:], 16)), (prefix, number))
        self.assertNotEqual(RequestIds()()[:16], prefix)

    def test_counter_width(self) -> None:
        """A counter that has reached its 16th digit is written in 16 digits still."""
        ids = RequestIds()
        ids._next += (1 << 60) - 1  # as if 2**60 - 1 ids had been made
        self.assertEqual(ids()[16:], "1000000000000000")
