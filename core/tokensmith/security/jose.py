"""The one base64url of the project, and the certificate thumbprint built on it.

- ``b64url_encode`` / ``b64url_decode``: base64url without padding (RFC 7515 §2, RFC 4648
  §5), as JWS segments, JWK members, ``kid`` thumbprints, stored secret hashes and wheel
  RECORD digests (PEP 376) all use it. Decoding is strict and canonical.
- ``x5t_s256``: the SHA-256 certificate thumbprint (RFC 7515 §4.1.8), which RFC 8705 §3.1
  puts in ``cnf`` to bind tokens to a client certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = ["b64url_encode", "b64url_decode", "x5t_s256"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url: no padding, no other characters, canonical; ValueError otherwise.

    Canonical means the unused low bits of the last character are zero, so every byte string
    has exactly one encoding and a token cannot be altered without changing its bytes.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def x5t_s256(der: bytes) -> str:
    """``x5t#S256`` (RFC 7515 §4.1.8, RFC 8705 §3.1): base64url of SHA-256 over the DER."""
    return b64url_encode(hashlib.sha256(der).digest())
