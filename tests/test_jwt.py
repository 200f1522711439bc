"""JWT access tokens (RFC 9068) from the real server, verified independently."""

from __future__ import annotations

import base64
import json

import pki
from conftest import new_deployment
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tokensmith.security.signing import SigningKeys


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


def test_signing_cli_rotate_list_retire(deployment) -> None:  # noqa: ANN001
    """signing rotate makes the active key, list shows it first, retire removes an old one."""
    first = deployment.cli("signing", "rotate").stdout.split()[0]
    second = deployment.cli("signing", "rotate", "--algorithm", "RS256").stdout.split()[0]
    lines = deployment.cli("signing", "list").stdout.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]
    assert lines[0].split()[1] == "RS256" and lines[0].endswith("active")
    refused = deployment.cli("signing", "retire", second, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    deployment.cli("signing", "retire", first)
    assert [k["kid"] for k in json.loads(deployment.cli("signing", "list", "--json").stdout)["keys"]] == [
        second
    ]


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
