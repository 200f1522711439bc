"""tokensmith: an OAuth 2.0 token server with pluggable client authentication.

Plugins import only from this package: ``hookimpl`` to mark hook implementations, the
objects hooks receive and return, and the OAuth error classes they may raise.
"""

from __future__ import annotations

from .clientauth import AuthenticatedClient, ClientAuthRequest
from .errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    ServerError,
    UnauthorizedClientError,
)
from .hookspecs import hookimpl
from .listeners import Listener
from .storage import Client

__all__ = [
    "hookimpl",
    "AuthenticatedClient",
    "ClientAuthRequest",
    "Client",
    "Listener",
    "OAuth2Error",
    "InvalidRequestError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidScopeError",
    "UnauthorizedClientError",
    "ServerError",
]
