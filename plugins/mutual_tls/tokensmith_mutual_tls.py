"""Mutual-TLS client authentication (RFC 8705 §2), WSO2's MutualTLSClientAuthenticator.

It engages when the request carries a client certificate and its ``client_id`` names a
client registered for ``self_signed_tls_client_auth`` or ``tls_client_auth``. The client is
never inferred from the certificate: without a ``client_id`` this authenticator stays out.

- ``self_signed_tls_client_auth`` (§2.2): the SHA-256 of the leaf's DER must equal one of the
  client's registered certificates, which must be within its validity period unless the
  ``AllowExpiredSelfSigned`` property is true.
- ``tls_client_auth`` (§2.1): the chain must validate against the truststore, and the
  client's one registered subject attribute (DN or a SAN) must match the leaf.

The certificate is ``request.client_cert_chain``: the server decides, before any listener
runs, whether it is this connection's handshake's or one a trusted proxy forwarded
(identity.xml ``<OAuth><ClientCertificateHeader>``), so that the token binding uses the same.

Properties (identity.xml ``<Property name=...>``):

- ``AllowExpiredSelfSigned``: ``true`` to accept expired or not-yet-valid registered
  self-signed certificates (default ``false``);
- ``SubjectDNMatching``: how a registered ``tls_client_auth`` subject DN is compared with the
  certificate's subject: ``exact`` (default: the same RDNs in the same order, the same
  attribute types, the same number of values, values the same text) or ``rfc4518`` (values
  compared case-insensitively after NFKC and space folding, RFC 4518). ``rfc4518`` is only
  safe with CAs that refuse to issue a subject that differs from another client's only in
  case, compatibility characters or spacing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from tokensmith import (
    DN_MATCHING,
    AuthenticatedClient,
    CertificateError,
    ClientAuthRequest,
    InvalidClientError,
    InvalidClientMetadataError,
    Listener,
    dn_matches,
    hookimpl,
    san_matches,
    verify_chain,
)

SELF_SIGNED = "self_signed_tls_client_auth"
PKI = "tls_client_auth"
#: RFC 8705 §2.1.2: the subject members, exactly one of which a tls_client_auth client has.
SUBJECT_MEMBERS = (
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
)
METHODS = (PKI, SELF_SIGNED)

log = logging.getLogger("tokensmith.plugins.mutual_tls")

# Properties of earlier versions: the forwarded certificate is now the server's business.
_MOVED = ("CertificateHeader", "CertificateHeaderFormat", "TrustedProxies")


@dataclass(frozen=True)
class Settings:
    allow_expired_self_signed: bool = False
    dn_matching: str = "exact"


def _bool(name: str, raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ValueError(f"property {name} must be true or false, not {raw!r}")
    return raw.lower() == "true"


@hookimpl
def listener_default_order() -> int:
    return 158  # the seed's orderId for WSO2's MutualTLSClientAuthenticator


@hookimpl
def client_auth_methods() -> list[str]:
    return list(METHODS)


@hookimpl
def listener_configure(listener: Listener) -> None:
    props = listener.properties
    moved = [name for name in _MOVED if name in props]
    if moved:
        raise ValueError(
            f'{", ".join(moved)} moved to <OAuth><ClientCertificateHeader name="..."'
            ' format="..." trustedProxies="..."/> in identity.xml, so that every authenticator'
            " and token binding use the forwarded certificate"
        )
    unknown = set(props) - {"AllowExpiredSelfSigned", "SubjectDNMatching"}
    if unknown:
        raise ValueError(f"unknown properties: {', '.join(sorted(unknown))}")
    dn_matching = props.get("SubjectDNMatching", "exact")
    if dn_matching not in DN_MATCHING:
        raise ValueError(f"SubjectDNMatching must be one of {', '.join(DN_MATCHING)}, not {dn_matching!r}")
    listener.stash["settings"] = Settings(
        allow_expired_self_signed=_bool(
            "AllowExpiredSelfSigned", props.get("AllowExpiredSelfSigned", "false")
        ),
        dn_matching=dn_matching,
    )


@hookimpl
def check_client_metadata(metadata, listener: Listener) -> None:  # noqa: ANN001
    """RFC 8705 §2.1.2: a tls_client_auth client registers exactly one subject member; §2.2:
    a self_signed_tls_client_auth client its certificates, as JWKs with ``x5c`` in ``jwks``
    (this authenticator does not fetch a ``jwks_uri``)."""
    method = metadata.get("token_endpoint_auth_method")
    if method == PKI:
        subjects = [name for name in SUBJECT_MEMBERS if name in metadata]
        if len(subjects) != 1:
            raise InvalidClientMetadataError(
                "a tls_client_auth client registers exactly one of " + ", ".join(SUBJECT_MEMBERS)
            )
    elif method == SELF_SIGNED:
        keys = (metadata.get("jwks") or {}).get("keys", [])
        if not any("x5c" in key for key in keys):
            raise InvalidClientMetadataError(
                "a self_signed_tls_client_auth client needs its certificate: a JWK with x5c in"
                " jwks (RFC 8705 §2.2); jwks_uri is not fetched"
            )


def _refused(client_id: str, reason: str, code: str) -> InvalidClientError:
    """The refusal a caller sees, the same whatever failed; the reason goes to the log.

    An unauthenticated caller must not learn from the answer whether a client_id exists or
    which method it uses (an unknown client and a wrong secret get "client authentication
    failed" too); the operator reads why in the log.
    """
    return InvalidClientError(
        "client authentication failed",
        reason=code,
        detail=f"mutual_tls: client {client_id} refused: {reason}",
        client_id=client_id,
    )


@hookimpl
async def authenticate_client(request: ClientAuthRequest, listener: Listener) -> AuthenticatedClient | None:
    """Engage for a certificate plus the client_id of a mutual-TLS client (RFC 8705 §2)."""
    client_id = request.form.get("client_id")
    if client_id is None:
        return None
    client = request.get_client(client_id)
    if client is None or client.token_endpoint_auth_method not in METHODS:
        return None
    settings: Settings = listener.stash["settings"]
    chain = request.client_cert_chain
    if not chain:
        return None
    now = time.time()
    if client.token_endpoint_auth_method == SELF_SIGNED:
        digest = hashlib.sha256(chain[0]).hexdigest()
        match = next((c for c in client.certificates if hmac.compare_digest(c.sha256, digest)), None)
        if match is None:
            raise _refused(
                client_id,
                "the client certificate is not registered for this client",
                "certificate_not_registered",
            )
        if not settings.allow_expired_self_signed and not match.not_before <= now <= match.not_after:
            raise _refused(
                client_id,
                "the registered client certificate is expired or not yet valid",
                "certificate_expired",
            )
        return AuthenticatedClient(client, SELF_SIGNED, certificate=chain[0])

    if client.tls_subject is None:
        raise _refused(client_id, "the client has no registered certificate subject", "no_registered_subject")
    try:
        leaf = verify_chain(chain, request.trust_anchors(), datetime.fromtimestamp(now, UTC))
        kind, value = client.tls_subject
        if kind == "tls_client_auth_subject_dn":
            matched = dn_matches(value, leaf, settings.dn_matching)
        else:
            matched = san_matches(kind.removeprefix("tls_client_auth_"), value, leaf)
    except CertificateError as exc:
        if "name constraint" in str(exc):
            # The CA's set-up, not the client, decides this one: the operator needs to know.
            log.warning("tls_client_auth: refused the certificate chain of client %s: %s", client_id, exc)
        raise _refused(
            client_id, f"the client certificate was refused: {exc}", "certificate_chain_refused"
        ) from None
    if not matched:
        raise _refused(
            client_id, "the client certificate does not match the registered subject", "subject_mismatch"
        )
    return AuthenticatedClient(client, PKI, certificate=chain[0])
