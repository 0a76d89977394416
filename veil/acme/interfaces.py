"""
Narrow interfaces between the ACME client and whatever answers challenges.

The client decides which challenge to answer; a responder makes the answer
reachable (the HTTP resource on :80 for C{http-01}, the edge's TLS contexts for
C{tls-alpn-01}) and withdraws it afterwards.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IChallengeResponder(Interface):
    """
    Makes ACME challenge answers visible to the certificate authority.

    Names are ASCII host names (A-labels) exactly as in the ACME identifier;
    tokens are the base64url strings from the challenge object.
    """

    supported_types = Attribute(
        "C{tuple[str, ...]}: the challenge types this responder can answer, "
        "such as C{('http-01', 'tls-alpn-01')}."
    )

    def add(challenge_type: str, name: str, token: str,
            key_authorization: str) -> "Deferred[None]":  # noqa: F821
        """
        Start answering a challenge.

        The returned Deferred fires once the answer is reachable by the CA
        (for example, committed to a store every node reads), because the
        client tells the CA to validate as soon as it fires.
        """

    def remove(challenge_type: str, name: str, token: str,
               key_authorization: str) -> "Deferred[None]":  # noqa: F821
        """
        Stop answering a challenge previously passed to L{add}.

        Called once validation finished, successfully or not. Removing an
        answer that is not there is not an error.
        """
