"""tokensmith: an OAuth 2.0 token server with pluggable client authentication.

Plugins import only from this package: ``hookimpl`` to mark hook implementations, the
objects hooks receive and return, and the OAuth error classes they may raise.
"""

from __future__ import annotations

import os as _os
import signal as _signal
import sys as _sys

if _os.path.basename(_sys.argv[0]) == "tokensmith" and _sys.argv[1:2] == ["serve"]:
    # SIGHUP means "reload" to a running server but kills the process until a handler
    # exists: one sent while `tokensmith serve` starts (a config manager racing a restart)
    # stopped it silently. Held from here, before the slow imports, until serve() or the
    # supervisor can take it.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGHUP})

from tokensmith.errors import (
    InvalidClientError,
    InvalidClientMetadataError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    ServerError,
    UnauthorizedClientError,
)
from tokensmith.listeners.registry import Listener
from tokensmith.listeners.state import PluginState, StateUnavailableError
from tokensmith.models import Client, RegisteredCertificate
from tokensmith.oauth.clientauth import AuthenticatedClient, ClientAuthRequest, RequestContext
from tokensmith.oauth.clientmetadata import client_metadata
from tokensmith.oauth.events import AuthorizationCodeEvent, ClientAuthEvent, TokenIssueEvent, TokenRevokeEvent
from tokensmith.oauth.hookspecs import hookimpl
from tokensmith.oauth.mtls import FORWARDED_FORMATS, parse_forwarded_certificate
from tokensmith.security.jose import x5t_s256
from tokensmith.security.x509 import (
    DN_MATCHING,
    CertificateError,
    dn_matches,
    san_matches,
    validity_problem,
    verify_chain,
)

__all__ = [
    "hookimpl",
    "AuthenticatedClient",
    "ClientAuthRequest",
    "RequestContext",
    "PluginState",
    "StateUnavailableError",
    "Client",
    "client_metadata",
    "RegisteredCertificate",
    "Listener",
    "TokenIssueEvent",
    "TokenRevokeEvent",
    "ClientAuthEvent",
    "AuthorizationCodeEvent",
    "CertificateError",
    "FORWARDED_FORMATS",
    "DN_MATCHING",
    "x5t_s256",
    "dn_matches",
    "san_matches",
    "validity_problem",
    "verify_chain",
    "parse_forwarded_certificate",
    "OAuth2Error",
    "InvalidRequestError",
    "InvalidClientError",
    "InvalidClientMetadataError",
    "InvalidGrantError",
    "InvalidScopeError",
    "UnauthorizedClientError",
    "ServerError",
]
