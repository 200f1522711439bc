"""OAuth 2.0 error responses as exception classes (RFC 6749 §5.2, RFC 7009 §2.2.1).

Errors are data: each class names its RFC ``error`` code and HTTP status. One Quart error
handler (``app.py``) renders every one of them, so a plugin raises ``InvalidClientError`` and
never builds a response itself.
"""

from __future__ import annotations

import re
from typing import ClassVar

__all__ = [
    "OAuth2Error",
    "InvalidRequestError",
    "InvalidClientError",
    "InvalidGrantError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "InvalidScopeError",
    "UnsupportedTokenTypeError",
    "ServerError",
    "TemporarilyUnavailableError",
    "InvalidClientMetadataError",
]

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def safe_description(text: str) -> str:
    """Drop every character RFC 6749 §5.2 does not allow in ``error_description``."""
    return _UNSAFE_DESCRIPTION.sub("", text)[:300]


class OAuth2Error(Exception):
    """An RFC 6749 §5.2 error response."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(description or self.error)
        self.description = safe_description(description) if description else None
        self.headers = dict(headers or {})
        #: For the operator only, never in the response: a short code (``secret_mismatch``)
        #: and words (``secret mismatch for client X``) saying why the request was refused.
        #: The refusal log line carries them; the client gets ``body()`` and nothing more.
        self.reason = reason or self.error
        self.detail = detail or self.description or self.error

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequestError(OAuth2Error):
    """RFC 6749 §5.2 ``invalid_request``: malformed, repeated or missing parameters."""

    error = "invalid_request"


class InvalidClientError(OAuth2Error):
    """RFC 6749 §5.2 ``invalid_client``: client authentication failed.

    "If the client attempted to authenticate via the Authorization request header field, the
    authorization server MUST respond with an HTTP 401 (Unauthorized) status code and include
    the WWW-Authenticate response header field matching the authentication scheme used by the
    client." The token endpoint adds that header; this class always answers 401.
    """

    error = "invalid_client"
    status_code = 401

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        detail: str | None = None,
        client_id: str | None = None,
    ):
        super().__init__(description, headers=headers, reason=reason, detail=detail)
        #: The client the refused credential claimed to be, when the authenticator knows it
        #: (an assertion's ``iss``, a certificate's client): the ``client_auth_failure``
        #: event carries it. Never sent to the caller.
        self.client_id = client_id


class InvalidGrantError(OAuth2Error):
    """RFC 6749 §5.2 ``invalid_grant``."""

    error = "invalid_grant"


class UnauthorizedClientError(OAuth2Error):
    """RFC 6749 §5.2 ``unauthorized_client``: the client may not use this grant type."""

    error = "unauthorized_client"


class UnsupportedGrantTypeError(OAuth2Error):
    """RFC 6749 §5.2 ``unsupported_grant_type``."""

    error = "unsupported_grant_type"


class InvalidScopeError(OAuth2Error):
    """RFC 6749 §5.2 ``invalid_scope``."""

    error = "invalid_scope"


class UnsupportedTokenTypeError(OAuth2Error):
    """RFC 7009 §2.2.1 ``unsupported_token_type``."""

    error = "unsupported_token_type"


class ServerError(OAuth2Error):
    """``server_error``: something on our side failed; details go to the log, not the client."""

    error = "server_error"
    status_code = 500


class TemporarilyUnavailableError(OAuth2Error):
    """``temporarily_unavailable``: storage or another dependency is down; fail closed."""

    error = "temporarily_unavailable"
    status_code = 503


class InvalidClientMetadataError(OAuth2Error):
    """RFC 7591 §3.2.2 ``invalid_client_metadata``: "The value of one of the client metadata
    fields is invalid and the server has rejected this request." Raised by a
    ``check_client_metadata`` hook; the description says which field and why."""

    error = "invalid_client_metadata"


class InvalidRedirectUriError(OAuth2Error):
    """RFC 7591 §3.2.2 ``invalid_redirect_uri``: "The value of one or more redirection URIs is
    invalid." """

    error = "invalid_redirect_uri"


class RequestRefused(Exception):
    """A request refused before any endpoint reads it, at the HTTP level: it cannot be parsed,
    or is over a size or time limit. The connection closes after the answer (*status*)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason
