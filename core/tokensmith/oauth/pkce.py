"""Proof Key for Code Exchange (RFC 7636), ``S256`` only.

``plain`` is refused: RFC 7636 §4.2 allows it only for clients that cannot compute SHA-256,
and RFC 9700 §2.1.1 says to use ``S256``; with ``plain`` a challenge seen in a browser's
history is the verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["METHODS", "VERIFIER", "CHALLENGE", "s256", "verifier_matches"]

METHODS = ("S256",)
#: RFC 7636 §4.1: code-verifier = 43*128unreserved.
VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
#: §4.2: BASE64URL(SHA256(verifier)) without padding: 43 characters.
CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def s256(verifier: str) -> str:
    """``code_challenge`` = BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether *verifier* is well formed and hashes to *challenge* (§4.6), in constant time."""
    if not VERIFIER.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
