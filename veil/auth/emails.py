"""E-mail addresses as accounts use them, and the pseudonym logs may carry instead."""

from __future__ import annotations

import re

from veil.auth.credentials import b64url, keyed

_ADDRESS = re.compile(r"[^@\s\x00-\x1f<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
                      r"\.[A-Za-z0-9-]{2,}")
MAX_LENGTH = 254


class InvalidEmail(ValueError):
    """Not an address an account can have; the message says why."""


def normalise_email(text: str) -> str:
    """
    An account's address: surrounding spaces removed, otherwise as typed
    (accounts are unique regardless of case; the database compares
    C{lower(email)}).
    """
    address = text.strip()
    if not address:
        raise InvalidEmail("Enter an e-mail address.")
    if len(address) > MAX_LENGTH:
        raise InvalidEmail(f"An e-mail address has at most {MAX_LENGTH} characters.")
    if not _ADDRESS.fullmatch(address):
        raise InvalidEmail("Enter an e-mail address like name@example.com.")
    return address


def email_ref(key: bytes, email: str) -> str:
    """A stable pseudonym of an address for logs and audit details (not reversible)."""
    return b64url(keyed(key, "email-ref", email.strip().casefold()))[:12]
