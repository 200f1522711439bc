"""The helpers that security/ and oauth/ share instead of repeating: the one base64url, the
one PEM-directory cache, the one Basic-header decoder, the one list of reserved claims."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import pytest
import tokensmith
from tokensmith.listeners.dropins import _record_digest
from tokensmith.oauth.claims import REGISTERED_CLAIMS, REQUIRED_CLAIMS, TOKEN_CLAIMS
from tokensmith.oauth.clientauth import basic_credentials, claimed_client_id
from tokensmith.oauth.events import REGISTERED_CLAIMS as EVENT_CLAIMS
from tokensmith.oauth.jwt import access_token_claims
from tokensmith.security import hashing
from tokensmith.security.jose import b64url_decode, b64url_encode, x5t_s256
from tokensmith.security.pemdir import PemDirectory

# --- base64url -----------------------------------------------------------------------------


def test_every_user_of_base64url_agrees_with_the_one_encoder() -> None:
    """Stored secret hashes, wheel RECORD digests and thumbprints are the one encoder's output."""
    data = hashlib.sha256(b"wheel member").digest()
    assert _record_digest(b"wheel member") == "sha256=" + b64url_encode(data)
    assert x5t_s256(b"der") == b64url_encode(hashlib.sha256(b"der").digest())
    assert tokensmith.x5t_s256 is x5t_s256
    stored = hashing.hash_secret("s3cret")
    salt, key = stored.split("$")[4:]
    assert "=" not in stored and len(b64url_decode(salt)) == 16 and len(b64url_decode(key)) == 32


def test_a_stored_hash_that_is_not_canonical_base64url_does_not_verify() -> None:
    """Stored hashes are decoded by the strict decoder: a damaged one is a refusal, not a crash."""
    stored = hashing.hash_secret("s3cret")
    assert hashing.verify_secret("s3cret", stored)
    assert not hashing.verify_secret("s3cret", stored + "=")
    assert not hashing.verify_secret("s3cret", stored[:-1] + "+")


# --- the PEM-directory cache ----------------------------------------------------------------


def test_pem_directory_reads_once_rereads_a_changed_file_and_skips_bad_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One scandir per call; a file is parsed again only when its stat changed; a file that
    fails is skipped and logged; a file *accept* refuses is never read."""
    parsed: list[str] = []

    def parse(path: Path) -> str:
        parsed.append(path.name)
        text = path.read_text()
        if text == "bad":
            raise ValueError("not what we want")
        return text

    log = logging.getLogger("tokensmith.test.pemdir")
    directory = PemDirectory(
        tmp_path, label="things", accept=lambda item: item.name.endswith(".pem"), parse=parse, log=log
    )
    (tmp_path / "a.pem").write_text("one")
    (tmp_path / "b.pem").write_text("bad")
    (tmp_path / "c.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert directory.items() == (("a.pem", "one"),)
    assert f"things: skipping {tmp_path / 'b.pem'}: not what we want" in caplog.text
    first = directory.items()
    assert directory.items() is first and parsed == ["a.pem", "b.pem"]

    (tmp_path / "b.pem").write_text("two")
    os.utime(tmp_path / "b.pem", ns=(1, 1))  # a different stat even on a coarse clock
    assert directory.items() == (("a.pem", "one"), ("b.pem", "two"))
    assert parsed == ["a.pem", "b.pem", "b.pem"]  # a.pem unchanged: not parsed again

    directory.forget()
    assert directory.items() == (("a.pem", "one"), ("b.pem", "two"))
    assert PemDirectory(tmp_path / "missing", label="x", accept=bool, parse=parse, log=log).items() == ()


# --- Basic credentials -----------------------------------------------------------------------


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Bearer abc", None),
        (basic("app:s3cret"), ("app", "s3cret")),
        ("  basic " + basic("app:s3cret")[6:] + " ", ("app", "s3cret")),
        (basic("my+app%3A:p%26ss+word"), ("my app:", "p&ss word")),  # RFC 6749 §2.3.1
        (basic("app:"), ("app", "")),
    ],
)
def test_basic_credentials_decode_rfc6749_2_3_1(header: str | None, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!",
        basic("no-colon"),
        basic(":secret"),
        basic("app%ff:s"),
        "Basic " + base64.b64encode(b"\xff:x").decode(),
    ],
)
def test_malformed_basic_credentials_are_a_value_error(header: str) -> None:
    with pytest.raises(ValueError):
        basic_credentials(header)


def test_the_claimed_client_id_reads_basic_leniently() -> None:
    """For logs and events: the body's client_id first, else the Basic user name, even when
    the credentials are malformed in a way the authenticator refuses."""
    assert claimed_client_id({"client_id": "body"}, basic("header:x")) == "body"
    assert claimed_client_id({}, basic("no-colon")) == "no-colon"
    assert claimed_client_id({}, basic("app%ff:s")) == "app\ufffd"
    assert claimed_client_id({}, "Basic !!!") is None and claimed_client_id({}, None) is None


# --- reserved claims -------------------------------------------------------------------------


def test_one_list_of_reserved_claims() -> None:
    """Interceptors are refused every claim a JWT access token sets itself, and more; the JWT
    builder refuses exactly the claims it sets, so auth_time may still be given to it."""
    assert EVENT_CLAIMS is REGISTERED_CLAIMS
    assert set(REQUIRED_CLAIMS) < TOKEN_CLAIMS < REGISTERED_CLAIMS
    for name in TOKEN_CLAIMS:
        with pytest.raises(ValueError, match=name):
            access_token_claims(issuer="https://i", client_id="c", scope="", iat=1, exp=2, extra={name: 1})
    made = access_token_claims(
        issuer="https://i", client_id="c", scope="", iat=1, exp=2, extra={"auth_time": 1}
    )
    assert made["auth_time"] == 1
