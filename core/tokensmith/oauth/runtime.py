"""``Runtime``: everything one generation of the configuration serves with.

The application builds one from server.xml, identity.xml and dropins/, and a reload builds
the next and swaps it in; an endpoint takes the current one once, at its start, and keeps it
for the whole request, so that a request never sees half of two configurations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokensmith.config.authenticators import AdminSettings
from tokensmith.config.settings import Config, IdentitySettings, PublicUrls
from tokensmith.listeners.registry import ListenerSet
from tokensmith.models import Storage
from tokensmith.oauth.clientauth import VerifiedSecrets
from tokensmith.oauth.grants import TokenIssuer
from tokensmith.security.signing import SigningKeys
from tokensmith.security.truststore import Truststore

__all__ = ["Runtime"]


@dataclass(frozen=True)
class Runtime:
    """Everything one generation of the configuration serves with."""

    config: Config
    identity: IdentitySettings
    storage: Storage
    listeners: ListenerSet
    issuer: TokenIssuer
    truststore: Truststore
    signing: SigningKeys
    verified_secrets: VerifiedSecrets
    generation: int
    #: The public URLs now (RFC 8414 §2): the issuer and the endpoints' URLs under it; they
    #: depend on the ports the sockets got, so they are asked for, not stored.
    urls: Callable[[], PublicUrls] | None = None
    #: What the enabled authenticators add to the server metadata (RFC 8414 §2).
    server_metadata: Mapping[str, Any] = field(default_factory=dict)
    #: conf/authenticators.xml: who may call the admin API and register clients.
    admin: AdminSettings = AdminSettings()
