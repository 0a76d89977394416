"""Waiting, bounded, for a condition that real components make true."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def until(condition: Callable[[], object], within: float = 20.0,
                what: str = "condition", every: float = 0.05) -> None:
    """
    Check C{condition} every C{every} seconds until it is true; fail the
    test with C{what} if C{within} seconds pass first.
    """
    deadline = reactor.seconds() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await deferLater(reactor, every, lambda: None)
