"""
Certificates, ACME accounts, challenge tokens and issuance back-off, in the store.

Private keys are sealed with the L{SecretBox} before they are written and
opened after they are read, bound to what they belong to (the certificate
name, the ACME directory) so that a sealed key cannot be moved to another
row.  Saving a certificate supersedes the older ones of the same name; the
row trigger notifies C{veil_certificates} with the name, which every
process uses to swap the new certificate into memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred, succeed

from veil.secretbox import SecretBox
from veil.store.db import Database


@attrs.frozen
class StoredCertificate:
    """A certificate with its private key, opened."""

    id: UUID
    name: str
    site_id: UUID | None
    key_type: str
    chain_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    renew_after: datetime | None


@attrs.frozen
class NewCertificate:
    """What an issuer produced, ready to be stored."""

    name: str
    site_id: UUID | None
    key_type: str
    key_pem: bytes
    chain_pem: bytes
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    acme_directory_url: str | None = None
    acme_order_url: str | None = None


@attrs.frozen
class RenewalDue:
    """A name whose newest certificate has reached its renewal time."""

    id: UUID
    name: str
    site_id: UUID | None
    key_type: str
    not_after: datetime


@attrs.frozen
class IssuanceState:
    """Shared per-name failure record (all processes and nodes)."""

    failures: int
    last_error: str | None
    next_attempt_at: datetime | None


def _cert_context(name: str) -> bytes:
    return b"certificate:" + name.encode("utf-8")


def _account_context(directory_url: str) -> bytes:
    return b"acme-account:" + directory_url.encode("utf-8")


_CERT_COLUMNS = ("id, name, site_id, key_type, chain_pem, key_encrypted, not_before,"
                 " not_after, issuer, serial, renew_after")


class CertificateStore:
    """Certificate, account and challenge queries, as Deferreds."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    # -- certificates --------------------------------------------------------

    def _open(self, row: tuple) -> StoredCertificate:
        (cid, name, site_id, key_type, chain_pem, sealed, not_before, not_after, issuer,
         serial, renew_after) = row
        key_pem = self._box.open(bytes(sealed), _cert_context(name))
        return StoredCertificate(cid, name, site_id, key_type, chain_pem.encode("ascii"),
                                 key_pem, not_before, not_after, issuer, serial, renew_after)

    def latest(self, name: str) -> Deferred[StoredCertificate | None]:
        """The newest valid, unexpired certificate for C{name}, or L{None}."""
        def latest(cur: psycopg.Cursor) -> StoredCertificate | None:
            cur.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates"
                " WHERE name = %s AND status = 'valid' AND not_after > now()"
                " AND not_before <= now() + interval '5 minutes'"
                " ORDER BY not_after DESC LIMIT 1", (name,))
            row = cur.fetchone()
            return None if row is None else self._open(row)

        return self._db.transact("certs.latest", latest)

    def latest_many(self, names: Sequence[str]) -> Deferred[dict[str, StoredCertificate | None]]:
        """
        L{latest} for each of C{names}, in one query per thousand names:
        every name maps to its newest valid certificate or L{None}.
        """
        wanted = list(names)
        if not wanted:
            return succeed({})

        def latest(cur: psycopg.Cursor) -> dict[str, StoredCertificate | None]:
            found: dict[str, StoredCertificate | None] = dict.fromkeys(wanted)
            for start in range(0, len(wanted), 1000):
                cur.execute(
                    f"SELECT DISTINCT ON (name) {_CERT_COLUMNS} FROM certificates"
                    " WHERE name = ANY(%s) AND status = 'valid' AND not_after > now()"
                    " AND not_before <= now() + interval '5 minutes'"
                    " ORDER BY name, not_after DESC", (wanted[start:start + 1000],))
                for row in cur.fetchall():
                    found[row[1]] = self._open(row)
            return found

        return self._db.transact("certs.latest_many", latest)

    def save(self, new: NewCertificate) -> Deferred[StoredCertificate]:
        """
        Store C{new}, supersede the older certificates of its name, and
        clear the name's failure record, in one transaction.
        """
        sealed = self._box.seal(new.key_pem, _cert_context(new.name))

        def save(cur: psycopg.Cursor) -> StoredCertificate:
            cur.execute(
                "INSERT INTO certificates (name, site_id, key_type, chain_pem, key_encrypted,"
                " not_before, not_after, issuer, serial, acme_directory_url, acme_order_url)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_CERT_COLUMNS}",
                (new.name, new.site_id, new.key_type, new.chain_pem.decode("ascii"), sealed,
                 new.not_before, new.not_after, new.issuer, new.serial,
                 new.acme_directory_url, new.acme_order_url))
            stored = self._open(cur.fetchone())
            cur.execute(
                "UPDATE certificates SET status = 'superseded'"
                " WHERE name = %s AND status = 'valid' AND id <> %s AND not_after <= %s",
                (new.name, stored.id, new.not_after))
            cur.execute(
                "INSERT INTO cert_issuance_state (name, failures, last_success_at,"
                " last_attempt_at, next_attempt_at) VALUES (%s, 0, now(), now(), NULL)"
                " ON CONFLICT (name) DO UPDATE SET failures = 0, last_error = NULL,"
                " last_success_at = now(), last_attempt_at = now(), next_attempt_at = NULL",
                (new.name,))
            return stored

        return self._db.transact("certs.save", save)

    def due_for_renewal(self, fraction: float, limit: int = 50) -> Deferred[list[RenewalDue]]:
        """
        Names whose newest valid certificate has passed its renewal time:
        the CA's C{renew_after} if it gave one, else C{fraction} of the
        lifetime.  Expired ones are included (they need a new one most).
        """
        def due(cur: psycopg.Cursor) -> list[RenewalDue]:
            cur.execute(
                "SELECT id, name, site_id, key_type, not_after FROM ("
                "  SELECT DISTINCT ON (name) id, name, site_id, key_type, not_before, not_after,"
                "         renew_after FROM certificates WHERE status = 'valid'"
                "  ORDER BY name, not_after DESC) newest"
                " WHERE coalesce(renew_after,"
                "                not_before + (not_after - not_before) * %s) <= now()"
                " ORDER BY not_after LIMIT %s", (fraction, limit))
            return [RenewalDue(*row) for row in cur.fetchall()]

        return self._db.transact("certs.due", due)

    # -- shared failure back-off -----------------------------------------------

    def issuance_state(self, name: str) -> Deferred[IssuanceState | None]:
        def state(cur: psycopg.Cursor) -> IssuanceState | None:
            cur.execute("SELECT failures, last_error, next_attempt_at FROM cert_issuance_state"
                        " WHERE name = %s", (name,))
            row = cur.fetchone()
            return None if row is None else IssuanceState(*row)

        return self._db.transact("certs.state", state)

    def record_failure(self, name: str, error: str, retry_in: float) -> Deferred[int]:
        """Count a failed issuance for C{name}; fires with the failure count."""
        def record(cur: psycopg.Cursor) -> int:
            cur.execute(
                "INSERT INTO cert_issuance_state (name, failures, last_error, last_attempt_at,"
                " next_attempt_at) VALUES (%s, 1, %s, now(), now() + make_interval(secs => %s))"
                " ON CONFLICT (name) DO UPDATE SET failures = cert_issuance_state.failures + 1,"
                " last_error = excluded.last_error, last_attempt_at = now(),"
                " next_attempt_at = excluded.next_attempt_at RETURNING failures",
                (name, error[:2000], retry_in))
            return cur.fetchone()[0]

        return self._db.transact("certs.failure", record)

    # -- ACME challenges (answered by any node) ------------------------------

    def add_challenge(self, challenge_type: str, name: str, token: str,
                      key_authorization: str) -> Deferred[None]:
        def add(cur: psycopg.Cursor) -> None:
            cur.execute(
                "INSERT INTO acme_challenges (token, challenge_type, key_authorization, name)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (token) DO UPDATE SET"
                " challenge_type = excluded.challenge_type,"
                " key_authorization = excluded.key_authorization, name = excluded.name,"
                " expires_at = now() + interval '1 hour'",
                (token, challenge_type, key_authorization, name))
            cur.execute("DELETE FROM acme_challenges WHERE expires_at < now()")

        return self._db.transact("challenges.add", add)

    def remove_challenge(self, token: str) -> Deferred[None]:
        def remove(cur: psycopg.Cursor) -> None:
            cur.execute("DELETE FROM acme_challenges WHERE token = %s", (token,))

        return self._db.transact("challenges.remove", remove)

    def http01(self, token: str) -> Deferred[str | None]:
        """The key authorization to answer for an http-01 C{token}."""
        def find(cur: psycopg.Cursor) -> str | None:
            cur.execute("SELECT key_authorization FROM acme_challenges WHERE token = %s"
                        " AND challenge_type = 'http-01' AND expires_at > now()", (token,))
            row = cur.fetchone()
            return None if row is None else row[0]

        return self._db.transact("challenges.http01", find)

    def tls_alpn01(self, name: str) -> Deferred[str | None]:
        """The newest tls-alpn-01 key authorization for C{name}."""
        def find(cur: psycopg.Cursor) -> str | None:
            cur.execute("SELECT key_authorization FROM acme_challenges WHERE name = %s"
                        " AND challenge_type = 'tls-alpn-01' AND expires_at > now()"
                        " ORDER BY created_at DESC LIMIT 1", (name,))
            row = cur.fetchone()
            return None if row is None else row[0]

        return self._db.transact("challenges.tls_alpn01", find)

    # -- ACME accounts -------------------------------------------------------

    def account(self, directory_url: str) -> Deferred[tuple[bytes, str | None] | None]:
        """The account key (opened) and URL for C{directory_url}, if any."""
        def find(cur: psycopg.Cursor) -> tuple[bytes, str | None] | None:
            cur.execute("SELECT key_encrypted, account_url FROM acme_accounts"
                        " WHERE directory_url = %s", (directory_url,))
            row = cur.fetchone()
            if row is None:
                return None
            return self._box.open(bytes(row[0]), _account_context(directory_url)), row[1]

        return self._db.transact("acme.account", find)

    def save_account(self, directory_url: str, key_pem: bytes, key_type: str,
                     email: str | None, eab_kid: str | None) -> Deferred[bytes]:
        """
        Store a new account key for C{directory_url} unless another process
        stored one first; fires with the key that is stored (theirs or ours).
        """
        sealed = self._box.seal(key_pem, _account_context(directory_url))

        def save(cur: psycopg.Cursor) -> bytes:
            cur.execute(
                "INSERT INTO acme_accounts (directory_url, contact_email, key_type,"
                " key_encrypted, eab_kid) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (directory_url) DO NOTHING",
                (directory_url, email, key_type, sealed, eab_kid))
            cur.execute("SELECT key_encrypted FROM acme_accounts WHERE directory_url = %s",
                        (directory_url,))
            return self._box.open(bytes(cur.fetchone()[0]), _account_context(directory_url))

        return self._db.transact("acme.account_save", save)

    def set_account_url(self, directory_url: str, account_url: str,
                        tos_agreed: bool) -> Deferred[None]:
        def update(cur: psycopg.Cursor) -> None:
            cur.execute("UPDATE acme_accounts SET account_url = %s, tos_agreed = %s"
                        " WHERE directory_url = %s", (account_url, tos_agreed, directory_url))

        return self._db.transact("acme.account_url", update)
