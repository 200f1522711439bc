"""JWT access tokens (RFC 9068): the claim set, signing, and verification.

- ``access_token_claims`` builds the RFC 9068 §2.2 claims, with ``cnf`` for certificate-bound
  tokens (RFC 8705 §3.1).
- ``encode_access_token`` signs them as a compact JWS (RFC 7515 §7.1) whose header says
  ``typ`` "at+jwt" (RFC 9068 §2.1).
- ``decode_access_token`` is the resource server's check (RFC 9068 §4): typ, an allow-listed
  asymmetric alg, the kid, the signature, then the claims.

The verification key comes only from the key set the caller passes, looked up by ``kid``;
header parameters that point at keys (``jwk``, ``jku``, ``x5u``, ``x5c``) are never used, and
"none" or HMAC algorithms are refused before any key is touched (RFC 8725 §2.1, §3.1).
Every refusal is ``TokenInvalid`` with a short reason, whatever the input.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tokensmith.oauth.claims import REQUIRED_CLAIMS, TOKEN_CLAIMS
from tokensmith.security.jose import b64url_decode, b64url_encode
from tokensmith.security.signing import SigningKey, SigningKeyError, VerificationKey

__all__ = [
    "TokenInvalid",
    "MAX_TOKEN_CHARS",
    "ALLOWED_ALGORITHMS",
    "REQUIRED_CLAIMS",
    "encode_access_token",
    "decode_access_token",
    "access_token_claims",
]

# Our tokens are well under 2 KiB; 16 KiB leaves room for large extra claims while bounding
# the base64, JSON and signature work an unauthenticated caller can ask of a verifier.
MAX_TOKEN_CHARS = 16 * 1024
# Asymmetric only: a resource server holds public keys, and accepting HMAC would let anyone
# holding the public key "sign" with it (the classic algorithm confusion, RFC 8725 §2.1).
ALLOWED_ALGORITHMS = frozenset({"ES256", "RS256"})
# RFC 9068 §2.2: required in every JWT access token.
# RFC 7515 §4.1.9 and RFC 9068 §4: "at+jwt" is short for this media type.
_MEDIA_TYPE = "application/at+jwt"
# 128 bits: jti values must not collide (RFC 7519 §4.1.7).
_JTI_BYTES = 16


class TokenInvalid(ValueError):
    """A JWT access token was refused; the message is a short reason."""


# --- building and signing ----------------------------------------------------------------


def access_token_claims(
    *,
    issuer: str,
    client_id: str,
    scope: str,
    iat: int,
    exp: int,
    subject: str | None = None,
    audience: str | Sequence[str] | None = None,
    cnf_x5t_s256: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9068 §2.2 claim set of an access token.

    - ``sub`` is *subject*, the resource owner (the username of the password grant), or the
      *client_id* when no resource owner is involved (§2.2, client credentials).
    - ``aud`` is *audience* (§2.2 requires one; §3 says the server picks a default when the
      request named no resource): the *issuer* unless given.
    - ``scope`` is the space-separated granted scope (§2.2.3), omitted when empty.
    - ``jti`` is 128 random bits; ``cnf`` carries ``x5t#S256`` for a certificate-bound token
      (RFC 8705 §3.1).
    - *extra* claims come last and may not replace any of these, nor ``nbf``: ValueError.
    """
    if not issuer or not client_id:
        raise ValueError("issuer and client_id must not be empty")
    if exp <= iat:
        raise ValueError(f"exp ({exp}) must be after iat ({iat})")
    if audience is None:
        audience = issuer
    elif not isinstance(audience, str):
        audience = list(audience)
        if not audience or not all(isinstance(a, str) and a for a in audience):
            raise ValueError("audience must be a non-empty string or list of strings")
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject if subject is not None else client_id,
        "aud": audience,
        "exp": exp,
        "iat": iat,
        "jti": b64url_encode(secrets.token_bytes(_JTI_BYTES)),
        "client_id": client_id,
    }
    if scope:
        claims["scope"] = scope
    if cnf_x5t_s256 is not None:
        claims["cnf"] = {"x5t#S256": cnf_x5t_s256}
    for name, value in (extra or {}).items():
        if name in TOKEN_CLAIMS:
            raise ValueError(f"extra claim {name!r} would replace a registered claim")
        claims[name] = value
    return claims


def _json_segment(value: Mapping[str, Any]) -> str:
    # Compact, and allow_nan=False: NaN and Infinity are not JSON (RFC 8259 §6).
    return b64url_encode(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    )


def encode_access_token(claims: Mapping[str, Any], key: SigningKey) -> str:
    """*claims* signed by *key* as a compact JWS with header typ "at+jwt", alg and kid (§2.1).

    ValueError if the claims are not JSON or the token would exceed ``MAX_TOKEN_CHARS`` (a
    token that our own verifier would refuse is never issued).
    """
    header = {"typ": "at+jwt", "alg": key.alg, "kid": key.kid}
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    token = f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"access token of {len(token)} characters exceeds {MAX_TOKEN_CHARS}")
    return token


# --- verifying ---------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 and RFC 7519 §4: reject duplicate names rather than guess which wins.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise TokenInvalid("malformed: duplicate member name")
    return result


def _not_json(constant: str) -> None:
    raise TokenInvalid(f"malformed: {constant} is not JSON")


def _json_object(segment: str, part: str) -> dict[str, Any]:
    """The JSON object a base64url segment holds, or TokenInvalid."""
    try:
        text = b64url_decode(segment).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_not_json)
    except TokenInvalid:
        raise
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; absurd nesting
        raise TokenInvalid(f"malformed {part}") from None
    if not isinstance(value, dict):
        raise TokenInvalid(f"malformed {part}: not a JSON object")
    return value


def _typ_is_access_token(typ: object) -> bool:
    """RFC 9068 §4 with RFC 7515 §4.1.9: "at+jwt" or "application/at+jwt", any case."""
    if not isinstance(typ, str):
        return False
    media_type = typ.lower()  # media type names are case-insensitive (RFC 6838 §4.2)
    if "/" not in media_type:
        media_type = "application/" + media_type
    return media_type == _MEDIA_TYPE


def _candidates(
    keys: Sequence[SigningKey | VerificationKey] | Mapping[str, Any], kid: str
) -> Iterator[VerificationKey]:
    """The keys named *kid* in a list of keys or a JWK Set (RFC 7517 §5)."""
    if isinstance(keys, Mapping):
        entries = keys.get("keys")
        if not isinstance(entries, list):
            raise TokenInvalid("no usable key set")
        for jwk in entries:
            if not isinstance(jwk, Mapping) or jwk.get("kid") != kid:
                continue
            # RFC 7517 §4.2: a key published for another use does not verify signatures.
            if jwk.get("use", "sig") == "sig":
                try:
                    yield VerificationKey.from_jwk(jwk)
                except SigningKeyError:
                    continue  # an unusable entry cannot have made this signature
        return
    for key in keys:
        verifier = key.verification_key if isinstance(key, SigningKey) else key
        if verifier.kid == kid:
            yield verifier


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    # RFC 7519 §2 NumericDate; bool is an int in Python but not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenInvalid(f"malformed claim {name!r}: not a NumericDate")
    return value


def _check_claims(
    claims: Mapping[str, Any], *, now: int, issuer: str, audience: str | None, leeway: int
) -> None:
    """RFC 9068 §4 claim checks: required claims present, time window, iss, aud."""
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise TokenInvalid(f"missing claim {name!r}")
    for name in ("iss", "sub", "client_id", "jti"):
        if not isinstance(claims[name], str):
            raise TokenInvalid(f"malformed claim {name!r}: not a string")
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise TokenInvalid("malformed claim 'aud'")
    exp, iat = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
    # RFC 7519 §4.1.4: the current time must be before exp.
    if now >= exp + leeway:
        raise TokenInvalid("expired")
    if iat > now + leeway:
        raise TokenInvalid("issued in the future")
    if "nbf" in claims and _numeric_date(claims, "nbf") > now + leeway:
        raise TokenInvalid("not yet valid")
    if claims["iss"] != issuer:
        raise TokenInvalid("wrong issuer")
    if audience is not None and audience not in audiences:
        raise TokenInvalid("wrong audience")


def decode_access_token(
    token: str,
    keys: Sequence[SigningKey | VerificationKey] | Mapping[str, Any],
    *,
    now: int,
    issuer: str,
    audience: str | None = None,
    leeway: int = 0,
) -> dict[str, Any]:
    """The claims of a JWT access token that passes every RFC 9068 §4 check; else TokenInvalid.

    *keys* is a list of keys (``SigningKeys.all()``) or a JWK Set (``SigningKeys.jwks()``).
    In order: size (at most ``MAX_TOKEN_CHARS``), three strict base64url segments, a header
    with typ "at+jwt" or "application/at+jwt" (any case), an alg in ``ALLOWED_ALGORITHMS``,
    no ``crit`` (we understand no extensions: RFC 7515 §4.1.11), a kid naming one of *keys*
    of that alg, the signature; only then the claims: every ``REQUIRED_CLAIMS`` present,
    ``exp`` after *now*, ``iat`` and ``nbf`` not after it (each with *leeway* seconds), ``iss``
    equal to *issuer*, and *audience*, if given, among ``aud``.
    """
    if leeway < 0:
        raise ValueError("leeway must not be negative")
    if not isinstance(token, str):
        raise TokenInvalid("malformed: not a string")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenInvalid("token too large")
    if not token.isascii():
        raise TokenInvalid("malformed: not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed: not a compact JWS")
    header_segment, payload_segment, signature_segment = parts
    header = _json_object(header_segment, "header")
    if not _typ_is_access_token(header.get("typ")):
        raise TokenInvalid("not an access token (typ)")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenInvalid("unsupported alg")
    if "crit" in header:
        raise TokenInvalid("unsupported critical header")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenInvalid("no kid")
    try:
        signature = b64url_decode(signature_segment)
    except ValueError:
        raise TokenInvalid("malformed signature") from None
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    found = False
    for key in _candidates(keys, kid):
        if key.alg != alg:
            continue  # the alg is fixed by the key; a header naming another one is refused
        found = True
        if key.verify(signing_input, signature):
            break
    else:
        raise TokenInvalid("bad signature" if found else "unknown kid")
    # Only now, authenticated, is the payload parsed.
    claims = _json_object(payload_segment, "payload")
    _check_claims(claims, now=now, issuer=issuer, audience=audience, leeway=leeway)
    return claims
