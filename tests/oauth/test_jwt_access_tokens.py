"""JWT access tokens (RFC 9068): claims, signing and the resource server's checks
(tokensmith.oauth.jwt), then the real server's JWTs verified independently.

Tokens are taken apart and their signatures checked here with the standard library and
``cryptography`` directly, and bad tokens are forged by hand, so that the encoder and the
decoder are not only tested against each other. Time is a fixed ``NOW`` in the unit tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pki
import pytest
from conftest import new_deployment
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tokensmith.oauth.jwt import (
    MAX_TOKEN_CHARS,
    TokenInvalid,
    access_token_claims,
    decode_access_token,
    encode_access_token,
)
from tokensmith.security.signing import SigningKey, SigningKeys

NOW = 1_900_000_000
ISSUER = "https://as.example.com"
API = "https://api.example.com"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(value: Mapping[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def claims(**changes: Any) -> dict[str, Any]:
    """A valid claim set issued at NOW for five minutes, with *changes* (None removes a claim)."""
    base = access_token_claims(
        issuer=ISSUER,
        client_id="app",
        scope="read write",
        iat=NOW,
        exp=NOW + 300,
        subject="alice",
        audience=API,
    )
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], key: SigningKey) -> str:
    """A token with any header and payload, really signed by *key*."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def spare_bit_set(last: str) -> str:
    """*last* with its lowest bit flipped: a 64-octet signature leaves 4 of its 6 bits unused."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(last) ^ 1]


def decode(token: str, keys: Any, **options: Any) -> dict[str, Any]:
    return decode_access_token(token, keys, **{"now": NOW, "issuer": ISSUER, **options})


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256")


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("ES256")


# --- the claim set (RFC 9068 §2.2) -------------------------------------------------------


def test_claims_hold_every_required_member() -> None:
    """The claim set has iss, sub, aud, exp, iat, jti, client_id and scope as given."""
    made = claims()
    assert {k: made[k] for k in ("iss", "sub", "aud", "exp", "iat", "client_id", "scope")} == {
        "iss": ISSUER,
        "sub": "alice",
        "aud": API,
        "exp": NOW + 300,
        "iat": NOW,
        "client_id": "app",
        "scope": "read write",
    }
    assert "cnf" not in made


def test_claims_default_sub_to_the_client_and_aud_to_the_issuer() -> None:
    """Without a resource owner sub is the client_id; without an audience aud is the issuer."""
    made = access_token_claims(issuer=ISSUER, client_id="app", scope="", iat=NOW, exp=NOW + 1)
    assert (made["sub"], made["aud"]) == ("app", ISSUER)
    assert "scope" not in made  # nothing granted: no empty scope claim


def test_jti_is_random_and_at_least_128_bits() -> None:
    """Every claim set gets a different jti of at least 16 random octets."""
    jtis = {claims()["jti"] for _ in range(50)}
    assert len(jtis) == 50 and all(len(unb64(jti)) >= 16 for jti in jtis)


def test_cnf_carries_the_certificate_thumbprint() -> None:
    """A certificate-bound token carries cnf {"x5t#S256": ...} (RFC 8705 §3.1)."""
    made = access_token_claims(
        issuer=ISSUER,
        client_id="app",
        scope="",
        iat=NOW,
        exp=NOW + 1,
        cnf_x5t_s256="A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0",
    )
    assert made["cnf"] == {"x5t#S256": "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"}


def test_extra_claims_are_added_but_cannot_replace_registered_ones() -> None:
    """Extra claims appear in the set; one named like a registered claim is a ValueError."""
    made = access_token_claims(
        issuer=ISSUER,
        client_id="app",
        scope="",
        iat=NOW,
        exp=NOW + 1,
        extra={"tenant": "acme", "auth_time": NOW - 5},
    )
    assert (made["tenant"], made["auth_time"]) == ("acme", NOW - 5)
    for name in ("sub", "aud", "iss", "exp", "nbf", "jti", "client_id", "scope", "cnf"):
        with pytest.raises(ValueError, match=name):
            access_token_claims(
                issuer=ISSUER, client_id="app", scope="", iat=NOW, exp=NOW + 1, extra={name: "x"}
            )


def test_claims_refuse_exp_not_after_iat() -> None:
    """A token that expires when or before it is issued is not built."""
    with pytest.raises(ValueError, match="after iat"):
        access_token_claims(issuer=ISSUER, client_id="app", scope="", iat=NOW, exp=NOW)


# --- encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_round_trip(alg: str, key: SigningKey, rsa_key: SigningKey) -> None:
    """A token encoded with an ES256 or RS256 key decodes to its claims."""
    signer = key if alg == "ES256" else rsa_key
    made = claims()
    assert decode(encode_access_token(made, signer), [signer], audience=API) == made


def test_header_is_compact_at_jwt_with_alg_and_kid(key: SigningKey) -> None:
    """The header is exactly {"typ":"at+jwt","alg":...,"kid":...}, serialised without spaces."""
    header = unb64(encode_access_token(claims(), key).split(".")[0])
    assert header == f'{{"typ":"at+jwt","alg":"ES256","kid":"{key.kid}"}}'.encode()


def test_payload_is_compact_json_of_the_claims(key: SigningKey) -> None:
    """The payload is the claims as JSON without whitespace."""
    made = claims()
    payload = unb64(encode_access_token(made, key).split(".")[1])
    assert payload == json.dumps(made, separators=(",", ":")).encode()


def test_es256_token_verifies_with_cryptography_and_the_published_jwk(key: SigningKey) -> None:
    """An ES256 token's R || S signature, as DER, verifies under the key rebuilt from its JWK."""
    token = encode_access_token(claims(), key)
    header_b64, payload_b64, signature_b64 = token.split(".")
    jwk = key.public_jwk()
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64(jwk["x"]), "big"), int.from_bytes(unb64(jwk["y"]), "big"), ec.SECP256R1()
    ).public_key()
    signature = unb64(signature_b64)
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, f"{header_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))


def test_rs256_token_verifies_with_cryptography_and_the_published_jwk(rsa_key: SigningKey) -> None:
    """An RS256 token's signature verifies as PKCS#1 v1.5 SHA-256 under the key from its JWK."""
    token = encode_access_token(claims(), rsa_key)
    header_b64, payload_b64, signature_b64 = token.split(".")
    jwk = rsa_key.public_jwk()
    public = rsa.RSAPublicNumbers(
        int.from_bytes(unb64(jwk["e"]), "big"), int.from_bytes(unb64(jwk["n"]), "big")
    ).public_key()
    public.verify(
        unb64(signature_b64), f"{header_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def test_oversized_claims_are_not_encoded(key: SigningKey) -> None:
    """A token the decoder would refuse as too large is never issued."""
    with pytest.raises(ValueError, match="exceeds"):
        encode_access_token(claims(blob="x" * MAX_TOKEN_CHARS), key)


# --- decoding: what is accepted ----------------------------------------------------------


def test_a_jwk_set_verifies_too(key: SigningKey, rsa_key: SigningKey) -> None:
    """The published JWK Set, as a resource server downloads it, verifies tokens of both keys."""
    jwks = json.loads(json.dumps({"keys": [key.public_jwk(), rsa_key.public_jwk()]}))
    for signer in (key, rsa_key):
        assert decode(encode_access_token(claims(), signer), jwks)["sub"] == "alice"


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_typ_forms_that_are_accepted(typ: str, key: SigningKey) -> None:
    """typ may be at+jwt with or without "application/", in any case (RFC 7515 §4.1.9)."""
    token = forge({"typ": typ, "alg": "ES256", "kid": key.kid}, claims(), key)
    assert decode(token, [key])["client_id"] == "app"


def test_aud_may_be_a_list_holding_the_audience(key: SigningKey) -> None:
    """A token whose aud array contains the expected audience is accepted."""
    token = encode_access_token(claims(aud=["https://other", API]), key)
    assert decode(token, [key], audience=API)["aud"] == ["https://other", API]


def test_leeway_covers_small_clock_skew(key: SigningKey) -> None:
    """Within the leeway an expired, not-yet-valid or future-issued token is accepted."""
    token = encode_access_token(claims(iat=NOW + 20, nbf=NOW + 20, exp=NOW - 20 + 1), key)
    with pytest.raises(TokenInvalid):
        decode(token, [key])
    assert decode(token, [key], leeway=30)["iat"] == NOW + 20


# --- decoding: what is refused -----------------------------------------------------------


def refused(token: str, keys: Any, reason: str, **options: Any) -> None:
    with pytest.raises(TokenInvalid, match=reason):
        decode(token, keys, **options)


def test_alg_none_is_refused(key: SigningKey) -> None:
    """An unsigned token (alg "none", empty signature) is refused."""
    token = f"{segment({'typ': 'at+jwt', 'alg': 'none', 'kid': key.kid})}.{segment(claims())}."
    refused(token, [key], "unsupported alg")


def test_hs256_with_the_public_key_as_secret_is_refused(key: SigningKey, rsa_key: SigningKey) -> None:
    """HMAC "signed" with the public key's PEM or JWK (algorithm confusion) is refused."""
    for signer in (key, rsa_key):
        pem = signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"typ": "at+jwt", "alg": "HS256", "kid": signer.kid}
        signing_input = f"{segment(header)}.{segment(claims())}"
        for secret in (pem, json.dumps(signer.public_jwk()).encode()):
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            token = f"{signing_input}.{b64(mac)}"
            refused(token, [signer], "unsupported alg")
            refused(token, {"keys": [signer.public_jwk()]}, "unsupported alg")


def test_alg_that_does_not_match_the_key_is_refused(key: SigningKey) -> None:
    """An ES256 key's kid with alg RS256 finds no key of that algorithm."""
    token = forge({"typ": "at+jwt", "alg": "RS256", "kid": key.kid}, claims(), key)
    refused(token, [key], "unknown kid")


def test_unknown_kid_is_refused(key: SigningKey) -> None:
    """A token whose kid is not in the key set is refused, even if another key would fit."""
    token = forge({"typ": "at+jwt", "alg": "ES256", "kid": "someone-else"}, claims(), key)
    refused(token, [key], "unknown kid")
    token = encode_access_token(claims(), SigningKey.generate())
    refused(token, [key], "unknown kid")


def test_missing_kid_is_refused(key: SigningKey) -> None:
    """A header without kid is refused."""
    refused(forge({"typ": "at+jwt", "alg": "ES256"}, claims(), key), [key], "no kid")


def test_a_key_embedded_in_the_header_is_ignored(key: SigningKey) -> None:
    """An attacker's own key in the jwk header, under our kid, does not make its signature good."""
    attacker = SigningKey.generate()
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid, "jwk": attacker.public_jwk()}
    refused(forge(header, claims(sub="admin"), attacker), [key], "bad signature")


def test_tampered_payload_is_refused(key: SigningKey) -> None:
    """Changing one claim of a signed token breaks its signature."""
    header_b64, _, signature_b64 = encode_access_token(claims(), key).split(".")
    token = f"{header_b64}.{segment(claims(sub='admin'))}.{signature_b64}"
    refused(token, [key], "bad signature")


def test_tampered_header_is_refused(key: SigningKey) -> None:
    """Changing the header of a signed token (even only its spelling) breaks its signature."""
    _, payload_b64, signature_b64 = encode_access_token(claims(), key).split(".")
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid}
    refused(f"{segment(header)}.{payload_b64}.{signature_b64}", [key], "bad signature")


def test_signature_of_another_key_is_refused(key: SigningKey) -> None:
    """A token signed by another key that claims our kid is refused."""
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid}
    token = forge(header, claims(), SigningKey.generate())
    refused(token, [key], "bad signature")


def test_der_encoded_es256_signature_is_refused(key: SigningKey) -> None:
    """ES256 signatures are 64 octets, R || S (RFC 7518 §3.4): DER or padded forms are refused."""
    header_b64, payload_b64, signature_b64 = encode_access_token(claims(), key).split(".")
    raw = unb64(signature_b64)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    refused(f"{header_b64}.{payload_b64}.{b64(der)}", [key], "bad signature")
    # R || 0x00 || S: the same integers, but not the 64 octets JWS prescribes
    padded = raw[:32] + bytes(1) + raw[32:]
    refused(f"{header_b64}.{payload_b64}.{b64(padded)}", [key], "bad signature")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "at+jwt2", "text/at+jwt", None, 1])
def test_other_typ_is_refused(typ: object, key: SigningKey) -> None:
    """A JWT that is not typed as an access token (an ID token, say) is refused."""
    header = {"alg": "ES256", "kid": key.kid}
    if typ is not None:
        header["typ"] = typ
    refused(forge(header, claims(), key), [key], "typ")


def test_critical_extensions_are_refused(key: SigningKey) -> None:
    """A header with crit is refused: we understand no JWS extension (RFC 7515 §4.1.11)."""
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid, "crit": ["exp"], "exp": 1}
    refused(forge(header, claims(), key), [key], "critical")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"exp": NOW}, "expired"),
        ({"exp": NOW - 1, "iat": NOW - 301}, "expired"),
        ({"nbf": NOW + 1}, "not yet valid"),
        ({"iat": NOW + 1}, "issued in the future"),
        ({"iss": "https://evil.example.com"}, "wrong issuer"),
        ({"aud": "https://other.example.com"}, "wrong audience"),
        ({"aud": ["https://other.example.com"]}, "wrong audience"),
        ({"aud": [1]}, "malformed claim 'aud'"),
        ({"exp": "2030-01-01"}, "NumericDate"),
        ({"exp": True}, "NumericDate"),
        ({"sub": 7}, "not a string"),
        ({"jti": None}, "missing claim 'jti'"),
        ({"client_id": None}, "missing claim 'client_id'"),
        ({"aud": None}, "missing claim 'aud'"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], reason: str, key: SigningKey) -> None:
    """A well-signed token that is expired, early, for another issuer or audience, or
    lacking or mistyping a required claim is refused."""
    refused(encode_access_token(claims(**changes), key), [key], reason, audience=API)


def test_oversized_token_is_refused_before_parsing(key: SigningKey) -> None:
    """A token longer than MAX_TOKEN_CHARS is refused as too large, whatever it holds."""
    refused("a" * (MAX_TOKEN_CHARS + 1), [key], "too large")
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid}
    token = forge(header, claims(blob="x" * MAX_TOKEN_CHARS), key)
    refused(token, [key], "too large")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h, p, s: f"{h}=.{p}.{s}",  # padding
        lambda h, p, s: f"{h}.{p}.{s}=",
        lambda h, p, s: f"{h}.{p}.{s[:-1]}+",  # standard alphabet
        lambda h, p, s: f"{h}.{p}.{s[:-1]}*",  # not base64 at all
        lambda h, p, s: f"{h}.{p}.{s[:-1]}{spare_bit_set(s[-1])}",  # the same bytes, non-canonical
        lambda h, p, s: f" {h}.{p}.{s}",
        lambda h, p, s: f"{h}.{p}.{s}.",  # four segments
        lambda h, p, s: f"{h}.{p}",  # two
        lambda h, p, s: f"{h}.{p}é.{s}",  # not ASCII
    ],
)
def test_bad_base64_and_shape_are_refused(mangle: Any, key: SigningKey) -> None:
    """Padding, the standard alphabet, stray characters, non-canonical base64, wrong segment
    counts and non-ASCII are refused as malformed."""
    refused(mangle(*encode_access_token(claims(), key).split(".")), [key], "malformed")


@pytest.mark.parametrize(
    "header_json",
    [
        b'{"typ":"at+jwt","alg":"ES256","alg":"none","kid":"k"}',  # duplicate member
        b'["at+jwt"]',  # not an object
        b'{"typ":"at+jwt","alg":"ES256","kid":NaN}',  # not JSON
        b"[" * 5000 + b"]" * 5000,  # absurd nesting
        b'\xff{"alg":"ES256"}',  # not UTF-8
    ],
)
def test_malformed_headers_are_refused(header_json: bytes, key: SigningKey) -> None:
    """Duplicate names, non-objects, NaN, deep nesting and non-UTF-8 in the header are refused."""
    _, payload_b64, signature_b64 = encode_access_token(claims(), key).split(".")
    refused(f"{b64(header_json)}.{payload_b64}.{signature_b64}", [key], "malformed")


def test_duplicate_claims_are_refused(key: SigningKey) -> None:
    """A signed payload with a claim twice is refused rather than one of the values trusted."""
    header = segment({"typ": "at+jwt", "alg": "ES256", "kid": key.kid})
    payload = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    signing_input = f"{header}.{b64(payload.encode())}"
    token = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
    refused(token, [key], "duplicate")


# --- the keyring and tokens --------------------------------------------------------------


def test_tokens_outlive_a_rotation_until_their_key_is_retired(tmp_path: Path) -> None:
    """After rotate() old tokens still verify (keys and JWK Set); after retire(old) they fail."""
    cli, server = SigningKeys(tmp_path), SigningKeys(tmp_path)
    old = cli.ensure()
    old_token = encode_access_token(claims(), server.active())
    new = cli.rotate()
    new_token = encode_access_token(claims(), server.active())
    assert json.loads(unb64(new_token.split(".")[0]))["kid"] == new.kid
    for token in (old_token, new_token):
        assert decode(token, server.all())["sub"] == "alice"
        assert decode(token, server.jwks())["sub"] == "alice"
    cli.retire(old.kid)
    refused(old_token, server.all(), "unknown kid")
    refused(old_token, server.jwks(), "unknown kid")
    assert decode(new_token, server.all())["sub"] == "alice"


# --- the real server's JWTs ----------------------------------------------------------------------


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_es256(token: str, jwks: dict) -> tuple[dict, dict]:
    """Check an ES256 JWT against a JWK Set with cryptography alone; return header and claims."""
    head, body, sig = token.split(".")
    header = json.loads(b64d(head))
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64d(jwk["x"]), "big"), int.from_bytes(b64d(jwk["y"]), "big"), ec.SECP256R1()
    )
    raw = b64d(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    numbers.public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    return header, json.loads(b64d(body))


def jwt_deployment(tmp_path, keystore, wheel_cache):  # noqa: ANN001, ANN201
    return new_deployment(
        tmp_path / "ts", keystore, wheel_cache, oauth="<AccessTokenFormat>jwt</AccessTokenFormat>"
    )


def test_jwt_access_token_verifies_against_jwks(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """A JWT access token has typ at+jwt, a kid in the JWKS, the RFC 9068 claims and cnf."""
    dep = jwt_deployment(tmp_path, keystore, wheel_cache)
    pair = pki.self_signed()
    files = pair.write(tmp_path, "c")
    client_id = str(
        dep.add_client(
            "j",
            "--grant-type",
            "client_credentials",
            "--scope",
            "read",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    server = serve(dep)
    with server.client(cert=files) as http:
        value = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        ).json()["access_token"]
        jwks = http.get("/oauth2/jwks").json()
        meta = http.get("/.well-known/oauth-authorization-server").json()
    header, claims = verify_es256(value, jwks)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    assert claims["iss"] == meta["issuer"] == server.url and meta["jwks_uri"].endswith("/oauth2/jwks")
    assert claims["client_id"] == client_id and claims["sub"] == client_id and claims["scope"] == "read"
    assert claims["aud"] and claims["exp"] - claims["iat"] == 3600 and len(claims["jti"]) >= 22
    assert claims["cnf"] == {"x5t#S256": pair.x5t_s256()}


def test_jwt_tokens_introspect_and_revoke(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """A JWT access token can be introspected and revoked like an opaque one."""
    dep = jwt_deployment(tmp_path, keystore, wheel_cache)
    client = dep.add_client("j", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        value = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth).json()[
            "access_token"
        ]
        assert value.count(".") == 2
        assert http.post("/oauth2/introspect", data={"token": value}, auth=auth).json()["active"] is True
        assert http.post("/oauth2/revoke", data={"token": value}, auth=auth).status_code == 200
        assert http.post("/oauth2/introspect", data={"token": value}, auth=auth).json() == {"active": False}


def test_signing_key_rotation_keeps_old_tokens_verifiable(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """After a rotation new tokens use the new kid and old tokens still verify against the JWKS."""
    dep = jwt_deployment(tmp_path, keystore, wheel_cache)
    client = dep.add_client("j", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        old = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth).json()[
            "access_token"
        ]
        SigningKeys(dep.conf / "security" / "signing").rotate()  # as the CLI does, from another process
        new = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth).json()[
            "access_token"
        ]
        jwks = http.get("/oauth2/jwks").json()
    assert len(jwks["keys"]) == 2
    old_header, _ = verify_es256(old, jwks)
    new_header, _ = verify_es256(new, jwks)
    assert old_header["kid"] != new_header["kid"]


def test_opaque_is_the_default(deployment, serve) -> None:  # noqa: ANN001
    """Without AccessTokenFormat, access tokens are opaque and the JWKS is empty."""
    client = deployment.add_client(
        "o", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = serve(deployment)
    with server.client() as http:
        value = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        ).json()["access_token"]
        assert "." not in value
        assert http.get("/oauth2/jwks").json() == {"keys": []}


def test_tampered_jwt_fails_independent_verification(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """The verifier used above rejects a token whose claims were changed (it can fail)."""
    dep = jwt_deployment(tmp_path, keystore, wheel_cache)
    client = dep.add_client("j", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    with server.client() as http:
        value = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        ).json()["access_token"]
        jwks = http.get("/oauth2/jwks").json()
    head, body, sig = value.split(".")
    claims = json.loads(b64d(body))
    claims["scope"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    try:
        verify_es256(f"{head}.{forged}.{sig}", jwks)
    except InvalidSignature:
        return
    raise AssertionError("a forged token verified")


def test_per_client_token_format_and_lifetime(deployment, serve) -> None:  # noqa: ANN001
    """A client registered with --token-format jwt and --access-token-lifetime gets exactly that."""
    jwt_client = deployment.add_client(
        "j",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--token-format",
        "jwt",
        "--access-token-lifetime",
        "120",
    )
    plain = deployment.add_client(
        "o", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = serve(deployment)
    with server.client() as http:
        issued = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(jwt_client["client_id"], jwt_client["client_secret"]),
        ).json()
        other = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(plain["client_id"], plain["client_secret"]),
        ).json()
        jwks = http.get("/oauth2/jwks").json()
    _, claims = verify_es256(issued["access_token"], jwks)
    assert issued["expires_in"] == 120 and claims["exp"] - claims["iat"] == 120
    assert "." not in other["access_token"] and other["expires_in"] == 3600
