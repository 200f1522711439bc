"""Token-signing keys and the keyring (tokensmith.security.signing).

Signatures are checked with ``cryptography`` directly and thumbprints are computed by hand
here, so that the module is not only tested against itself.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tokensmith.security.jose import b64url_decode, b64url_encode
from tokensmith.security.signing import (
    SigningKey,
    SigningKeyError,
    SigningKeys,
    VerificationKey,
    jwk_thumbprint,
)

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
    "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
    "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
KEY_FILE_NAME = r"\d{8}T\d{12}Z\.[A-Za-z0-9_-]{43}\.pem"


def unb64(text: str) -> bytes:
    """The test's own base64url decoder."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256")


@pytest.fixture
def ec_key() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture
def keyring(tmp_path: Path) -> SigningKeys:
    return SigningKeys(tmp_path / "signing")


def key_files(keys: SigningKeys) -> list[str]:
    return sorted(name for name in os.listdir(keys.directory) if not name.startswith("."))


# --- thumbprints and JWKs ----------------------------------------------------------------


def test_thumbprint_of_the_rfc7638_example_key() -> None:
    """The RFC 7638 §3.1 example JWK has the RFC's thumbprint, whatever its other members."""
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == RFC7638_THUMBPRINT


def test_kid_of_a_fixed_rsa_key_is_its_rfc7638_thumbprint() -> None:
    """A key built from the RFC 7638 example's modulus and exponent gets that thumbprint as kid."""
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(unb64(RFC7638_N), "big")).public_key()
    key = VerificationKey.from_public_key(public)
    assert (key.kid, key.alg) == (RFC7638_THUMBPRINT, "RS256")
    assert key.public_jwk() == {
        "e": "AQAB",
        "kty": "RSA",
        "n": RFC7638_N,
        "kid": RFC7638_THUMBPRINT,
        "alg": "RS256",
        "use": "sig",
    }


def test_kid_of_an_ec_key_is_a_hand_computed_thumbprint(ec_key: SigningKey) -> None:
    """An EC key's kid is SHA-256 over {"crv","kty","x","y"} in that order, without whitespace."""
    numbers = ec_key.public_key.public_numbers()
    x = base64.urlsafe_b64encode(numbers.x.to_bytes(32, "big")).rstrip(b"=").decode()
    y = base64.urlsafe_b64encode(numbers.y.to_bytes(32, "big")).rstrip(b"=").decode()
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    assert ec_key.kid == expected.decode()


def test_ec_public_jwk_has_the_public_members_only(ec_key: SigningKey) -> None:
    """An ES256 JWK has kty, crv, 32-octet x and y, kid, alg and use "sig", and nothing private."""
    jwk = ec_key.public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert len(unb64(jwk["x"])) == len(unb64(jwk["y"])) == 32
    numbers = ec_key.public_key.public_numbers()
    assert int.from_bytes(unb64(jwk["x"]), "big") == numbers.x
    assert jwk["kid"] == ec_key.kid == jwk_thumbprint(jwk)


def test_rsa_public_jwk_has_the_public_members_only(rsa_key: SigningKey) -> None:
    """An RS256 JWK has kty, n, e, kid, alg and use "sig"; n has no leading zero octet."""
    jwk = rsa_key.public_jwk()
    assert set(jwk) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["e"], jwk["alg"]) == ("RSA", "AQAB", "RS256")
    n = unb64(jwk["n"])
    assert len(n) == 256 and n[0] != 0
    assert int.from_bytes(n, "big") == rsa_key.public_key.public_numbers().n


def test_a_jwk_round_trips_to_the_same_verification_key(ec_key: SigningKey, rsa_key: SigningKey) -> None:
    """Reading a published JWK back gives the key's kid, alg and public key."""
    for key in (ec_key, rsa_key):
        assert VerificationKey.from_jwk(key.public_jwk()) == key.verification_key


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"kty": "oct"}, "unsupported kty"),
        ({"crv": "P-384"}, "unsupported curve"),
        ({"x": "AAAA"}, "32 octets"),
        ({"y": b64url_encode(b"\x01" * 32)}, "malformed EC key"),  # not on the curve
        ({"x": "not base64!"}, "malformed EC key"),
        ({"alg": "RS256"}, "does not fit"),
        ({"kid": None}, "no kid"),
    ],
)
def test_unusable_jwks_are_refused(ec_key: SigningKey, change: dict[str, object], expected: str) -> None:
    """A JWK of another type or curve, off the curve, in bad base64, with a wrong alg or no kid
    is refused."""
    jwk = {**ec_key.public_jwk(), **change}
    with pytest.raises(SigningKeyError, match=expected):
        VerificationKey.from_jwk(jwk)


# --- keys and signatures -----------------------------------------------------------------


def test_es256_signature_is_raw_r_s_and_verifies_with_cryptography(ec_key: SigningKey) -> None:
    """An ES256 signature is 64 octets, R || S, which as DER verifies with the public key."""
    signature = ec_key.sign(b"signing input")
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public = ec_key.public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, b"signing input", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, b"other input", ec.ECDSA(hashes.SHA256()))


def test_rs256_signature_is_pkcs1_v15_sha256(rsa_key: SigningKey) -> None:
    """An RS256 signature is RSASSA-PKCS1-v1_5 with SHA-256, as cryptography verifies it."""
    signature = rsa_key.sign(b"signing input")
    assert len(signature) == 256
    rsa_key.public_key.verify(
        signature,
        b"signing input",  # type: ignore[call-arg]
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_verify_accepts_only_the_right_signature(ec_key: SigningKey) -> None:
    """verify is True for the key's signature and False for other data, keys or a DER signature."""
    signature = ec_key.sign(b"data")
    assert ec_key.verification_key.verify(b"data", signature)
    assert not ec_key.verification_key.verify(b"datA", signature)
    assert not SigningKey.generate().verification_key.verify(b"data", signature)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    assert not ec_key.verification_key.verify(b"data", der)


def test_pem_round_trip_keeps_the_key(rsa_key: SigningKey) -> None:
    """A key written as PEM and read back has the same kid and signs verifiably."""
    again = SigningKey.from_pem(rsa_key.to_pem())
    assert again.kid == rsa_key.kid
    assert rsa_key.verification_key.verify(b"x", again.sign(b"x"))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "must be P-256"),
        (lambda: rsa.generate_private_key(65537, 1024), "2048 to 8192 bits"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "EC P-256 or RSA"),
    ],
)
def test_other_keys_are_refused(make: object, expected: str) -> None:
    """P-384, RSA below 2048 bits and Ed25519 keys are not signing keys."""
    with pytest.raises(SigningKeyError, match=expected):
        SigningKey(make())  # type: ignore[operator]


def test_unknown_algorithms_are_refused(keyring: SigningKeys) -> None:
    """Only ES256 and RS256 keys can be generated or rotated to."""
    with pytest.raises(SigningKeyError, match="HS256"):
        SigningKey.generate("HS256")
    with pytest.raises(SigningKeyError, match="PS256"):
        keyring.rotate("PS256")


@pytest.mark.parametrize("text", ["QQ==", "Q+Q", "Q/Q", "Q Q", "QR", "Q", "QQ\n"])
def test_base64url_is_strict(text: str) -> None:
    """Padding, the standard alphabet, whitespace, set spare bits and bad lengths are refused."""
    with pytest.raises(ValueError):
        b64url_decode(text)


def test_base64url_round_trips() -> None:
    """Every short byte string encodes without padding and decodes back."""
    for n in range(8):
        data = bytes(range(250, 250 - n, -1))
        assert b64url_decode(b64url_encode(data)) == data and "=" not in b64url_encode(data)


# --- the keyring -------------------------------------------------------------------------


def test_an_empty_keyring_has_no_active_key(keyring: SigningKeys) -> None:
    """A missing directory is an empty keyring: no keys, an empty JWK Set, active() refused."""
    assert keyring.all() == [] and keyring.jwks() == {"keys": []}
    with pytest.raises(SigningKeyError, match="no token-signing key"):
        keyring.active()


def test_ensure_creates_one_private_es256_key_file(keyring: SigningKeys) -> None:
    """ensure() makes one ES256 key, in a 0600 file <created>.<kid>.pem in a 0700 directory."""
    key = keyring.ensure()
    [name] = key_files(keyring)
    assert key.alg == "ES256" and name.endswith(f".{key.kid}.pem")
    assert re.fullmatch(KEY_FILE_NAME, name)
    assert stat.S_IMODE((keyring.directory / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring.directory.stat().st_mode) == 0o700
    assert SigningKey.from_pem((keyring.directory / name).read_bytes()).kid == key.kid


def test_ensure_keeps_an_existing_key(keyring: SigningKeys) -> None:
    """A second ensure(), even from another instance, returns the same key and writes nothing."""
    first = keyring.ensure()
    assert SigningKeys(keyring.directory).ensure().kid == first.kid
    assert len(key_files(keyring)) == 1


def test_concurrent_ensures_make_one_key(keyring: SigningKeys) -> None:
    """Keyrings racing to ensure() an empty directory agree on one key (the writers' lock)."""
    with ThreadPoolExecutor(8) as pool:
        kids = set(pool.map(lambda _: SigningKeys(keyring.directory).ensure().kid, range(8)))
    assert len(kids) == 1 and len(key_files(keyring)) == 1


def test_rotate_makes_a_new_active_key_and_keeps_the_old_published(keyring: SigningKeys) -> None:
    """After rotate() the new key is active and first; the old key stays in all() and jwks()."""
    old = keyring.ensure()
    new = keyring.rotate()
    assert new.kid != old.kid and keyring.active().kid == new.kid
    assert [k.kid for k in keyring.all()] == [new.kid, old.kid]
    assert [jwk["kid"] for jwk in keyring.jwks()["keys"]] == [new.kid, old.kid]
    assert new.created is not None and old.created is not None and new.created > old.created


def test_rotate_to_rs256(keyring: SigningKeys) -> None:
    """rotate("RS256") makes an RSA key the active one, published with alg RS256."""
    keyring.ensure()
    key = keyring.rotate("RS256")
    assert keyring.active().alg == "RS256" and keyring.jwks()["keys"][0]["kty"] == "RSA"
    assert key.kid == keyring.jwks()["keys"][0]["kid"]


def test_quick_rotations_keep_their_order(keyring: SigningKeys) -> None:
    """Many rotations in a row are ordered as made, the last one active."""
    made = [keyring.rotate().kid for _ in range(6)]
    assert [k.kid for k in keyring.all()] == made[::-1]
    assert not [n for n in os.listdir(keyring.directory) if n.startswith(".tmp-")]


def test_a_rotation_is_newest_even_if_the_clock_went_back(keyring: SigningKeys) -> None:
    """A key made while the clock is behind the newest key's timestamp still becomes active."""
    old = keyring.ensure()
    [name] = key_files(keyring)
    future = f"20991231T235959999999Z.{old.kid}.pem"
    (keyring.directory / name).rename(keyring.directory / future)
    new = keyring.rotate()
    assert [k.kid for k in keyring.all()] == [new.kid, old.kid]
    assert key_files(keyring)[-1].startswith("21000101T000000000000Z.")


def test_retire_removes_a_previous_key(keyring: SigningKeys) -> None:
    """retire(old) deletes its file and drops it from all() and jwks()."""
    old = keyring.ensure()
    new = keyring.rotate()
    keyring.retire(old.kid)
    assert [k.kid for k in keyring.all()] == [new.kid]
    assert [jwk["kid"] for jwk in keyring.jwks()["keys"]] == [new.kid]
    [name] = key_files(keyring)
    assert name.endswith(f".{new.kid}.pem")


def test_retire_refuses_the_active_key_and_unknown_kids(keyring: SigningKeys) -> None:
    """The active key cannot be retired, nor a kid the keyring does not hold."""
    active = keyring.ensure()
    with pytest.raises(SigningKeyError, match="active"):
        keyring.retire(active.kid)
    with pytest.raises(SigningKeyError, match="no signing key"):
        keyring.retire("nope")
    assert keyring.active().kid == active.kid and len(key_files(keyring)) == 1


def test_another_instance_sees_rotations_and_retirements(keyring: SigningKeys) -> None:
    """A server's keyring sees what a CLI's keyring on the same directory did, without restart."""
    server = SigningKeys(keyring.directory)
    old = keyring.ensure()
    assert server.active().kid == old.kid
    new = keyring.rotate()  # the CLI
    assert server.active().kid == new.kid
    assert [k.kid for k in server.all()] == [new.kid, old.kid]
    keyring.retire(old.kid)
    assert [jwk["kid"] for jwk in server.jwks()["keys"]] == [new.kid]


def test_unchanged_keyring_is_not_reread(keyring: SigningKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file changed, repeated calls parse no key file again."""
    keyring.ensure()
    keyring.all()
    monkeypatch.setattr(SigningKey, "from_pem", None)  # any parse would now fail loudly
    assert len(keyring.all()) == 1 and keyring.active().alg == "ES256"


def test_stray_and_renamed_files_are_skipped_with_a_warning(
    keyring: SigningKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """A .pem not named by the keyring, or whose kid is not its key's, is skipped and logged."""
    old = keyring.ensure()
    new = keyring.rotate()
    [old_name, new_name] = key_files(keyring)
    shutil.copy(keyring.directory / new_name, keyring.directory / "hand-made.pem")
    # the newer key's file now holds the older key: its name no longer tells the truth
    (keyring.directory / new_name).write_bytes((keyring.directory / old_name).read_bytes())
    with caplog.at_level(logging.WARNING, logger="tokensmith.security.signing"):
        assert [k.kid for k in SigningKeys(keyring.directory).all()] == [old.kid]
    assert "hand-made.pem" in caplog.text and "not a keyring file name" in caplog.text
    assert f"{new.kid}.pem" in caplog.text and "thumbprint" in caplog.text
