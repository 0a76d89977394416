"""
One hierarchy for every error Veil raises on purpose.

Anything that is not a L{VeilError} is a bug and is logged as a failure.
"""

from __future__ import annotations


class VeilError(Exception):
    """Base of every error Veil raises deliberately."""


class ConfigError(VeilError):
    """
    A configuration value is missing, malformed or out of range.

    @ivar path: the configuration file (or C{"environment"}) the value came from.
    @ivar key: the dotted key, such as C{edge.port}.
    @ivar reason: what is wrong with it, for a human.
    """

    def __init__(self, path: str | None, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{key}: {reason}")


class StoreUnavailable(VeilError):
    """The database could not be reached within the configured time."""


class MigrationError(VeilError):
    """
    A schema migration failed and was rolled back.

    @ivar filename: the migration file that failed.
    @ivar detail: PostgreSQL's error message.
    """

    def __init__(self, filename: str, detail: str) -> None:
        self.filename = filename
        self.detail = detail
        super().__init__(f"migration {filename} failed: {detail}")


class EmbeddedPostgresError(VeilError):
    """The embedded PostgreSQL cluster could not be set up or started."""


class IssuanceRefused(VeilError):
    """Policy forbids issuing a certificate for this name."""


class IssuanceFailed(VeilError):
    """The certificate authority did not issue a certificate."""


class ApiError(VeilError):
    """An API request failed in a way the client should be told about."""

    def __init__(self, code: str, message: str, detail: object = None,
                 status: int = 400) -> None:
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status
        super().__init__(f"{code}: {message}")


class CertificateError(VeilError):
    """
    Certificate or private key material is malformed, does not match, or is
    incomplete (for example a CA directory holding a certificate but no key).
    """


class SecretError(VeilError):
    """
    A sealed secret could not be opened: it was tampered with, it was sealed
    under a key this box does not hold, or under a different context; or a
    secret-box key is malformed.
    """
