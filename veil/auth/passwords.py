"""
Passwords: the rules a new one must meet, and argon2id off the reactor.

Rules (NIST SP 800-63B section 3.1.1.2, ASVS 5.0 section 6.2): at least 12
characters and at most 128, counted after Unicode NFKC normalisation (the
same password typed with composed or decomposed characters is the same
password); no composition rules; any character, spaces included, kept as
typed (no trimming, no case folding); refused when it is a commonly used
password (the list shipped in C{common-passwords.txt}, compared without
regard to case) or the account's own e-mail address or its local part.

Hashing: argon2id with RFC 9106's second recommended parameters (t=3,
m=64 MiB, p=4, 16-byte salt, 32-byte tag), on a thread pool of its own so
that neither the reactor nor the database threads wait for it.  The pool's
queue is bounded: a flood of sign-ins is refused with L{HasherBusy} (503)
instead of holding 64 MiB per waiting request.  Hashes made with weaker
parameters are upgraded at the next successful sign-in (L{Verdict.rehash}).
"""

from __future__ import annotations

import secrets
import unicodedata
from importlib import resources
from typing import Any

import attrs
from argon2 import PasswordHasher as Argon2
from argon2 import exceptions as argon2_errors
from argon2 import profiles
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from veil.errors import VeilError

MIN_LENGTH = 12
MAX_LENGTH = 128

#: RFC 9106 section 4, the second recommended option.
PROFILE = profiles.RFC_9106_LOW_MEMORY


class WeakPassword(VeilError):
    """A new password does not meet the rules; the message says which."""


class HasherBusy(VeilError):
    """Too many password hashes are waiting; try again shortly."""


def normalise(password: str) -> str:
    """The form a password is hashed in: Unicode NFKC, nothing else changed."""
    return unicodedata.normalize("NFKC", password)


class PasswordRules:
    """The checks a new password must pass (the common list is loaded once)."""

    def __init__(self, common: frozenset[str] | None = None) -> None:
        self.common = common if common is not None else load_common_passwords()

    def problem(self, password: str, email: str | None = None) -> str | None:
        """What is wrong with C{password} as a new password, or L{None}."""
        text = normalise(password)
        if len(text) < MIN_LENGTH:
            return f"Use at least {MIN_LENGTH} characters."
        if len(text) > MAX_LENGTH:
            return f"Use at most {MAX_LENGTH} characters."
        folded = text.casefold()
        if folded in self.common or len(set(folded)) == 1:
            return "This password is too common. Choose one that is not used by many people."
        if email:
            address = email.strip().casefold()
            local = address.partition("@")[0]
            if folded in (address, local) or folded.strip("0123456789!.-_ ") == local:
                return "Do not use your e-mail address as your password."
        return None

    def check(self, password: str, email: str | None = None) -> None:
        """@raise WeakPassword: unless C{password} passes."""
        problem = self.problem(password, email)
        if problem is not None:
            raise WeakPassword(problem)


def load_common_passwords() -> frozenset[str]:
    """The shipped list: one password per line, lower case, C{#} comments."""
    text = resources.files("veil.auth").joinpath("common-passwords.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


@attrs.frozen
class Verdict:
    """
    The outcome of checking a password.

    @ivar ok: whether it matched.
    @ivar rehash: a new hash to store, when the old one used weaker
        parameters than today's.
    """

    ok: bool
    rehash: str | None = None


@attrs.define(eq=False)
class PasswordHasher:
    """
    argon2id on a dedicated thread pool with a bounded queue.

    @ivar threads: hashes computed at once (each holds 64 MiB).
    @ivar queue: hashes allowed to wait beyond those; more fail at once
        with L{HasherBusy}.
    """

    reactor: Any
    threads: int = 2
    queue: int = 16
    parameters: Any = PROFILE
    _argon: Argon2 = attrs.field(init=False)
    _pool: ThreadPool = attrs.field(init=False)
    _pending: int = attrs.field(default=0, init=False)
    _dummy: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._argon = Argon2.from_parameters(self.parameters)
        self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="veil-passwords")

    def start(self) -> Deferred[None]:
        """Start the threads and compute the stand-in hash for unknown accounts."""
        self._pool.start()
        d = self._run(self._argon.hash, secrets.token_urlsafe(16))
        d.addCallback(self._set_dummy)
        return d

    def _set_dummy(self, value: str) -> None:
        self._dummy = value

    def stop(self) -> None:
        self._pool.stop()

    @property
    def pending(self) -> int:
        """Hashes running or waiting."""
        return self._pending

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        if self._pending >= self.threads + self.queue:
            return fail(HasherBusy("too many sign-ins at once; try again in a few seconds"))
        self._pending += 1
        d = deferToThreadPool(self.reactor, self._pool, fn, *args)

        def done(result: Any) -> Any:
            self._pending -= 1
            return result

        d.addBoth(done)
        return d

    def hash(self, password: str) -> Deferred[str]:
        """The PHC string (C{$argon2id$v=19$m=65536,t=3,p=4$...}) for C{password}."""
        return self._run(self._argon.hash, normalise(password))

    def verify(self, stored: str | None, password: str) -> Deferred[Verdict]:
        """
        Check C{password} against C{stored}.  With no stored hash (an unknown
        account, or one without a password) a stand-in hash is checked
        instead, so the answer takes as long either way, and is no.
        """
        return self._run(self._verify, stored, normalise(password))

    def _verify(self, stored: str | None, password: str) -> Verdict:
        candidate = stored if stored is not None and stored.startswith("$argon2") else None
        try:
            self._argon.verify(candidate or self._dummy or self._argon.hash("x"), password)
        except (argon2_errors.VerificationError, argon2_errors.InvalidHashError):
            return Verdict(False)
        if candidate is None:
            return Verdict(False)
        if self._argon.check_needs_rehash(candidate):
            return Verdict(True, self._argon.hash(password))
        return Verdict(True)


def hash_now(password: str) -> str:
    """
    Hash on the calling thread: only for the command line, which hashes
    before its reactor starts.
    """
    return Argon2.from_parameters(PROFILE).hash(normalise(password))
