"""
GitHub's OAuth web application flow, on treq.

  1. L{GithubClient.authorize_url}: C{GET <base>/login/oauth/authorize}
     with C{client_id}, C{redirect_uri}, C{scope=read:user user:email},
     C{state}, C{code_challenge} (S256) and C{allow_signup=false}.
  2. GitHub sends the browser back with C{?code=...&state=...}, or with
     C{?error=access_denied&error_description=...&state=...}.
  3. L{GithubClient.exchange}: C{POST <base>/login/oauth/access_token}
     (form-encoded, C{Accept: application/json}) with the client
     credentials, the code, the redirect URI and the PKCE C{code_verifier}.
     GitHub reports errors (C{bad_verification_code},
     C{incorrect_client_credentials}, C{redirect_uri_mismatch},
     C{unverified_user_email}) in the body, with status 200.
  4. L{GithubClient.identity}: C{GET <api>/user} (the numeric C{id} is the
     identity: a C{login} can change) and C{GET <api>/user/emails} (which
     needs C{user:email}) with C{Authorization: Bearer}, the REST API's
     C{Accept} and C{X-GitHub-Api-Version} headers and a C{User-Agent}.

The token is used for those two calls and then forgotten.  Sources:
github/docs C{authorizing-oauth-apps.md}, C{troubleshooting-*-errors.md},
the REST reference for C{/user/emails}, and GitHub's changelog of
2025-07-14 for PKCE (S256 only).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import attrs
from treq.client import HTTPClient

from veil.config import GithubConfig
from veil.errors import VeilError

SCOPES = ("read:user", "user:email")
API_VERSION = "2022-11-28"
#: GitHub's answers are small; anything bigger is refused.
MAX_RESPONSE = 1 << 20


class GithubError(VeilError):
    """
    GitHub refused or failed; C{reason} is a short code (C{access_denied},
    C{bad_verification_code}, C{unverified_email}, C{scope}, C{http}, ...).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@attrs.frozen
class Identity:
    """
    Who signed in at GitHub.

    @ivar verified_emails: the addresses GitHub has verified, primary first.
    """

    id: int
    login: str
    verified_emails: tuple[str, ...]


@attrs.frozen
class GithubClient:
    config: GithubConfig
    http: HTTPClient
    redirect_uri: str
    timeout: float = 15.0

    def authorize_url(self, state: str, code_challenge: str) -> str:
        query = urlencode({
            "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(SCOPES),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "allow_signup": "false",
        })
        return f"{self.config.base_url}/login/oauth/authorize?{query}"

    async def _body(self, response: Any, what: str) -> bytes:
        length = response.length
        if isinstance(length, int) and length > MAX_RESPONSE:
            raise GithubError("http", f"GitHub's {what} answer is too large")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_RESPONSE:
                raise GithubError("http", f"GitHub's {what} answer is too large")
            chunks.append(data)

        from treq import collect as treq_collect

        await treq_collect(response, collect)
        return b"".join(chunks)

    async def exchange(self, code: str, verifier: str) -> str:
        """Trade the callback's C{code} for an access token."""
        try:
            response = await self.http.post(
                f"{self.config.base_url}/login/oauth/access_token",
                data={"client_id": self.config.client_id,
                      "client_secret": self.config.client_secret,
                      "code": code, "redirect_uri": self.redirect_uri,
                      "code_verifier": verifier},
                headers={"Accept": "application/json", "User-Agent": "Veil"},
                timeout=self.timeout)
            body = await self._body(response, "token")
        except GithubError:
            raise
        except Exception as e:
            raise GithubError("http", f"GitHub could not be reached ({type(e).__name__})") from e
        if response.code != 200:
            raise GithubError("http", f"GitHub answered the token request with {response.code}")
        fields = _token_fields(body, response.headers.getRawHeaders(b"content-type", [b""])[0])
        if "error" in fields:
            error = str(fields["error"])
            raise GithubError(error, f"GitHub refused the sign-in ({error})")
        token = fields.get("access_token")
        if not isinstance(token, str) or not token:
            raise GithubError("http", "GitHub's token answer has no access token")
        granted = {s.strip() for s in str(fields.get("scope", "")).split(",") if s.strip()}
        if not ({"user:email", "user"} & granted):
            raise GithubError("scope", "GitHub did not grant access to the e-mail addresses"
                                       " (user:email); Veil needs a verified address")
        return token

    async def _get(self, path: str, token: str) -> Any:
        try:
            response = await self.http.get(
                f"{self.config.api_url}{path}",
                headers={"Accept": "application/vnd.github+json",
                         "Authorization": f"Bearer {token}",
                         "X-GitHub-Api-Version": API_VERSION, "User-Agent": "Veil"},
                timeout=self.timeout)
            body = await self._body(response, path)
        except GithubError:
            raise
        except Exception as e:
            raise GithubError("http", f"GitHub's API could not be reached ({type(e).__name__})"
                              ) from e
        if response.code != 200:
            raise GithubError("http", f"GitHub's API answered {path} with {response.code}")
        try:
            return json.loads(body)
        except ValueError:
            raise GithubError("http", f"GitHub's API answered {path} with something not JSON"
                              ) from None

    async def identity(self, token: str) -> Identity:
        """The user behind C{token}, with GitHub's verified e-mail addresses."""
        user = await self._get("/user", token)
        if not isinstance(user, dict) or not isinstance(user.get("id"), int) \
                or isinstance(user.get("id"), bool) or not isinstance(user.get("login"), str):
            raise GithubError("http", "GitHub's /user answer has no id or login")
        emails = await self._get("/user/emails?per_page=100", token)
        if not isinstance(emails, list):
            raise GithubError("http", "GitHub's /user/emails answer is not a list")
        verified = [e for e in emails if isinstance(e, dict) and e.get("verified") is True
                    and isinstance(e.get("email"), str)]
        verified.sort(key=lambda e: e.get("primary") is not True)
        if not verified:
            raise GithubError("unverified_email", "your GitHub account has no verified e-mail"
                                                  " address")
        return Identity(user["id"], user["login"], tuple(e["email"] for e in verified))


def _token_fields(body: bytes, content_type: bytes) -> dict[str, Any]:
    """The token answer: JSON when asked for, form-encoded by default."""
    text = body.decode("utf-8", "replace")
    if content_type.split(b";")[0].strip().lower() == b"application/json" or \
            text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            raise GithubError("http", "GitHub's token answer is not valid JSON") from None
        if not isinstance(value, dict):
            raise GithubError("http", "GitHub's token answer is not an object")
        return value
    return dict(parse_qsl(text))
