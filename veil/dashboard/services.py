"""
What the dashboard's handlers work with.

The dashboard's port is bound before the database is reachable, so the
L{Dashboard} and its handler groups are built with a L{Services} whose
store-backed parts are filled in once start-up has reached them
(L{veil.service.VeilService}); until then the routes that need them answer
503.  Engineers adding routes add what their handlers need here.
"""

from __future__ import annotations

from typing import Any

import attrs

from veil.config import Config


@attrs.define(eq=False)
class Services:
    """
    @ivar config: the whole configuration.
    @ivar clock: where time comes from (C{seconds()}); tests advance it.
    @ivar reactor: for threads, timers and connections.
    @ivar accounts: sign-in, sessions and tokens (L{veil.auth.accounts.Accounts}).
    @ivar db: the L{veil.store.db.Database}.
    """

    config: Config
    clock: Any
    reactor: Any
    accounts: Any = None
    db: Any = None

    @property
    def store(self) -> Any:
        """The auth store (users, sessions, tokens, sites and roles, audit)."""
        return None if self.accounts is None else self.accounts.store
