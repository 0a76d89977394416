"""
Record values as Veil reads them: CAA's wire format (which C{twisted.names}
does not know) and DNS text made safe to show.
"""

from __future__ import annotations

import attrs

#: The CAA record type (RFC 8659); C{twisted.names} has no constant for it.
CAA = 257

#: Longest piece of DNS-supplied text shown in a report.
SHOW_AT_MOST = 120


@attrs.frozen
class CaaRecord:
    """
    One CAA record: C{flags tag "value"}.

    @ivar critical: the issuer-critical flag (bit 128): a CA that does not
        understand the tag must not issue.
    """

    flags: int
    tag: str
    value: str

    @property
    def critical(self) -> bool:
        return bool(self.flags & 0x80)

    def text(self) -> str:
        """The record as a zone file writes it, e.g. C{0 issue "letsencrypt.org"}."""
        return f'{self.flags} {self.tag} "{printable(self.value)}"'


def parse_caa(rdata: bytes) -> CaaRecord:
    """
    Decode CAA RDATA: flags (1 byte), tag length (1 byte), tag, value.

    @raise ValueError: for RDATA that is too short or a tag that is not
        1-15 ASCII letters and digits.
    """
    if len(rdata) < 2:
        raise ValueError("CAA record shorter than two bytes")
    flags, length = rdata[0], rdata[1]
    tag = rdata[2:2 + length]
    if length == 0 or length > 15 or len(tag) != length or not tag.isalnum() \
            or not tag.isascii():
        raise ValueError("CAA tag is not 1-15 letters and digits")
    return CaaRecord(flags, tag.decode("ascii").lower(),
                     rdata[2 + length:].decode("utf-8", "replace"))


def printable(text: str, limit: int = SHOW_AT_MOST) -> str:
    """
    C{text} from DNS, for a human: control and non-ASCII characters as
    C{\\xNN} or C{\\uNNNN} escapes, cut to C{limit} characters with C{...}.
    """
    shown = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii")
                    for c in text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."
