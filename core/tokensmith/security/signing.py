"""Token-signing keys: one key pair (``SigningKey``) and the keyring on disk (``SigningKeys``).

A signing key is an ECDSA P-256 key, used with ES256, or an RSA key of at least 2048 bits,
used with RS256 (RFC 7518 §3.4 and §3.3; RFC 9068 §2.1 requires RS256 support from resource
servers, ES256 is the smaller and faster default). Its ``kid`` is its RFC 7638 JWK thumbprint,
so the same key always has the same id, in every process and after every restart.

The keyring is a directory of PEM files, one per key, named ``<created>.<kid>.pem``: the
newest is the active key that signs, and older ones stay published in the JWK Set (RFC 7517
§5) so that tokens they signed keep verifying until they expire; ``retire`` removes one.
Keys are stored unencrypted, protected by file mode 0600 like the TLS key.

The keyring is deliberately separate from the TLS keystore (key separation): the TLS key
signs handshakes for anyone who connects, lives wherever TLS ends (often a proxy) and is
renewed with its certificate; a token-signing key stays with the token server, rotates on
its own schedule while its predecessors stay published, and the loss of either key must not
give away the other.
"""

from __future__ import annotations

import fcntl  # POSIX, like the server's signal handling
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tokensmith.security.files import private_dir
from tokensmith.security.jose import b64url_decode, b64url_encode
from tokensmith.security.pemdir import PemDirectory

__all__ = [
    "ALGORITHMS",
    "MIN_RSA_BITS",
    "MAX_RSA_BITS",
    "SigningKeyError",
    "SigningKey",
    "VerificationKey",
    "SigningKeys",
    "jwk_thumbprint",
]

log = logging.getLogger(__name__)


ALGORITHMS = ("ES256", "RS256")
# RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS = 2048
# Huge moduli make every verification slow for nothing (a way to burn a verifier's CPU).
MAX_RSA_BITS = 8192
# An 8192-bit PEM private key is under 7 KiB; anything much larger is the wrong file.
_MAX_KEY_FILE_BYTES = 64 * 1024
# RFC 7518 §3.4: each of R and S is a 32-octet big-endian integer for P-256.
_P256_OCTETS = 32
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_KEY_FILE = re.compile(r"(\d{8}T\d{12}Z)\.([A-Za-z0-9_-]{43})\.pem")
_THUMBPRINT_MEMBERS = MappingProxyType({"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")})


class SigningKeyError(ValueError):
    """A signing key, key file or JWK was refused, or a keyring operation is not allowed."""


def _uint(value: int) -> str:
    """An unsigned integer as JWA wants it: big-endian, minimal octets (RFC 7518 §6.3.1.1)."""
    return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


# --- JWK (RFC 7517, RFC 7518 §6) ---------------------------------------------------------

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _required_members(public_key: PublicKey) -> dict[str, str]:
    """The members RFC 7638 §3.2 hashes: EC crv, kty, x, y; RSA e, kty, n."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        # RFC 7518 §6.2.1.2: x and y are the full coordinate length, leading zeros kept.
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url_encode(numbers.x.to_bytes(_P256_OCTETS, "big")),
            "y": b64url_encode(numbers.y.to_bytes(_P256_OCTETS, "big")),
        }
    rsa_numbers = public_key.public_numbers()
    return {"e": _uint(rsa_numbers.e), "kty": "RSA", "n": _uint(rsa_numbers.n)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint with SHA-256, base64url: the ``kid`` of our keys.

    Only the required members of the key type count (§3.2), serialised with sorted names and
    no whitespace (§3.3); other members such as ``kid`` or ``alg`` do not change it.
    """
    kty = jwk.get("kty")
    names = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if names is None:
        raise SigningKeyError(f"JWK thumbprint: unsupported kty {jwk.get('kty')!r}")
    members = {name: jwk.get(name) for name in names}
    if not all(isinstance(value, str) for value in members.values()):
        raise SigningKeyError(f"JWK thumbprint: {', '.join(names)} must all be strings")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _algorithm_for(public_key: object) -> str:
    """ES256 or RS256 for a key we accept; SigningKeyError for any other key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise SigningKeyError(f"EC signing keys must be P-256 (ES256), not {public_key.curve.name}")
        return "ES256"
    if isinstance(public_key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
            raise SigningKeyError(
                f"RSA signing keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS}"
                f" bits (RFC 7518 §3.3), not {public_key.key_size}"
            )
        return "RS256"
    raise SigningKeyError(f"signing keys must be EC P-256 or RSA, not {type(public_key).__name__}")


@dataclass(frozen=True)
class VerificationKey:
    """A public key that checks JWS signatures of one algorithm, named by its ``kid``."""

    kid: str
    alg: str
    public_key: PublicKey

    @classmethod
    def from_public_key(cls, public_key: PublicKey) -> VerificationKey:
        alg = _algorithm_for(public_key)
        return cls(jwk_thumbprint(_required_members(public_key)), alg, public_key)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """The key a published JWK describes (RFC 7518 §6.2.1, §6.3.1); SigningKeyError if unusable.

        Its ``kid`` is kept as published; ``alg``, when present, must agree with the key type.
        """
        kty = jwk.get("kty")
        try:
            if kty == "EC":
                if jwk.get("crv") != "P-256":
                    raise SigningKeyError(f"JWK: unsupported curve {jwk.get('crv')!r}")
                x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
                if len(x) != _P256_OCTETS or len(y) != _P256_OCTETS:
                    raise SigningKeyError("JWK: P-256 coordinates must be 32 octets")
                public_key: PublicKey = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
                ).public_key()
            elif kty == "RSA":
                n, e = b64url_decode(jwk["n"]), b64url_decode(jwk["e"])
                public_key = rsa.RSAPublicNumbers(
                    int.from_bytes(e, "big"), int.from_bytes(n, "big")
                ).public_key()
            else:
                raise SigningKeyError(f"JWK: unsupported kty {kty!r}")
        except SigningKeyError:
            raise
        except (KeyError, TypeError, ValueError):
            # missing members, non-strings, bad base64 or a point not on the curve
            raise SigningKeyError(f"JWK: malformed {kty} key") from None
        alg = _algorithm_for(public_key)
        if jwk.get("alg", alg) != alg:
            raise SigningKeyError(f"JWK: alg {jwk.get('alg')!r} does not fit a {kty} key")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise SigningKeyError("JWK: no kid")
        return cls(kid, alg, public_key)

    def public_jwk(self) -> dict[str, str]:
        """The JWK to publish (RFC 7517 §4): key members, ``kid``, ``alg`` and ``use`` "sig"."""
        return {**_required_members(self.public_key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether *signature* is this key's JWS signature over *data* (RFC 7518 §3.3, §3.4)."""
        try:
            if isinstance(self.public_key, ec.EllipticCurvePublicKey):
                # RFC 7518 §3.4: exactly R || S, 32 octets each; DER or other lengths are refused.
                if len(signature) != 2 * _P256_OCTETS:
                    return False
                der = encode_dss_signature(
                    int.from_bytes(signature[:_P256_OCTETS], "big"),
                    int.from_bytes(signature[_P256_OCTETS:], "big"),
                )
                self.public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
            else:
                self.public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """A private token-signing key: ES256 (EC P-256) or RS256 (RSA, 2048 to 8192 bits).

    ``kid`` is the RFC 7638 thumbprint of the public key; ``created`` is when the keyring
    made it (None for a key that is not from a keyring).
    """

    def __init__(self, private_key: PrivateKey, *, created: datetime | None = None):
        if not isinstance(private_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise SigningKeyError(f"signing keys must be EC P-256 or RSA, not {type(private_key).__name__}")
        self._private_key = private_key
        self.verification_key = VerificationKey.from_public_key(private_key.public_key())
        self.created = created

    @classmethod
    def generate(cls, algorithm: str = "ES256", *, created: datetime | None = None) -> SigningKey:
        """A new key for *algorithm*: a P-256 key for ES256, a 2048-bit RSA key for RS256."""
        if algorithm == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()), created=created)
        if algorithm == "RS256":
            return cls(
                rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS), created=created
            )
        raise SigningKeyError(
            f"unsupported signing algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
        )

    @classmethod
    def from_pem(cls, data: bytes, *, created: datetime | None = None) -> SigningKey:
        """The unencrypted PEM private key in *data*; SigningKeyError if it is anything else."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise SigningKeyError(
                "the private key is encrypted; signing keys are stored"
                " unencrypted, protected by file mode 0600"
            ) from None
        except ValueError:
            raise SigningKeyError("not a PEM private key") from None
        return cls(key, created=created)  # type: ignore[arg-type]

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def kid(self) -> str:
        return self.verification_key.kid

    @property
    def alg(self) -> str:
        return self.verification_key.alg

    @property
    def public_key(self) -> PublicKey:
        return self.verification_key.public_key

    def public_jwk(self) -> dict[str, str]:
        """The public JWK: kty with crv/x/y or n/e, then kid, alg and use "sig"."""
        return self.verification_key.public_jwk()

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of *data*: R || S for ES256 (RFC 7518 §3.4), PKCS#1 v1.5 for RS256."""
        key = self._private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            # cryptography returns DER; JWS wants the two integers as fixed-size octets.
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(_P256_OCTETS, "big") + s.to_bytes(_P256_OCTETS, "big")
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r})"


# --- the keyring -------------------------------------------------------------------------


class SigningKeys:
    """The keyring in *directory*: the newest key signs, older ones stay published until retired.

    Each key is one file, ``<created>.<kid>.pem``, *created* being UTC to the microsecond
    (``20310314T120000000000Z``), so names sort by age. Files are written atomically (a hidden
    temporary file renamed into place) with mode 0600, and the directory is 0700.

    The directory is read through ``pemdir.PemDirectory``: every call looks at it with one
    ``scandir`` and re-reads it only when a key file was added, removed or replaced, so a
    rotation or retirement made by the CLI in another process applies to a running server's
    next token. A ``*.pem`` file that is not a readable key named as above is skipped with a
    warning, as the truststore does with bad certificates, so that one stray file cannot stop
    token issuance.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._files: PemDirectory[SigningKey] = PemDirectory(
            self.directory,
            label="signing keys",
            accept=_is_key_file,
            parse=_load,
            log=log,
        )
        # (what the directory gave, the keys newest first), replaced whole.
        self._newest_first: tuple[tuple[tuple[str, SigningKey], ...], tuple[SigningKey, ...]] = ((), ())

    # reading

    def _keys(self) -> tuple[SigningKey, ...]:
        """Every usable key, newest first, re-read only if a key file changed."""
        items = self._files.items()  # by name: fixed-width timestamps first, oldest key first
        seen, keys = self._newest_first
        if items is not seen:
            keys = tuple(key for _, key in reversed(items))
            self._newest_first = (items, keys)
        return keys

    def all(self) -> list[SigningKey]:
        """The active key first, then the previous keys still published, newest first."""
        return list(self._keys())

    def active(self) -> SigningKey:
        """The newest key, the one that signs new tokens; SigningKeyError if there is none."""
        keys = self._keys()
        if not keys:
            raise SigningKeyError(f"{self.directory}: no token-signing key; create one with ensure or rotate")
        return keys[0]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set to publish (RFC 7517 §5): the public half of every key, active first."""
        return {"keys": [key.public_jwk() for key in self._keys()]}

    # writing

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers across processes, so that two ``ensure`` calls make one key."""
        private_dir(self.directory)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
            self._files.forget()

    def _sync_directory(self) -> None:
        """Make a rename or unlink durable: POSIX needs the directory itself fsynced."""
        with suppress(OSError):  # not every platform or filesystem can open a directory
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _add(self, algorithm: str) -> SigningKey:
        """Create, write and return a key newer than every key present (lock held)."""
        created = datetime.now(UTC)
        newest = self._keys()[:1]
        if newest and newest[0].created is not None and created <= newest[0].created:
            # The clock went back, or two rotations fell within one microsecond: file names
            # are our only ordering, so keep them strictly increasing anyway.
            created = newest[0].created + timedelta(microseconds=1)
        key = SigningKey.generate(algorithm, created=created)
        name = f"{created.strftime(_STAMP_FORMAT)}.{key.kid}.pem"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(key.to_pem())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.directory / name)  # readers see all of the file or none
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync_directory()
        return key

    def ensure(self) -> SigningKey:
        """The active key, creating an ES256 key first if the keyring has none."""
        with self._locked():
            keys = self._keys()
            return keys[0] if keys else self._add("ES256")

    def rotate(self, algorithm: str = "ES256") -> SigningKey:
        """Make and return a new active key for *algorithm*; previous keys stay published."""
        if algorithm not in ALGORITHMS:
            raise SigningKeyError(
                f"unsupported signing algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
            )
        with self._locked():
            return self._add(algorithm)

    def retire(self, kid: str) -> None:
        """Delete a previous key, so that tokens it signed stop verifying; never the active one.

        Retire a key only once every token it signed has expired: one access-token lifetime
        after the rotation that replaced it.
        """
        with self._locked():
            keys = self._keys()
            if keys and keys[0].kid == kid:
                raise SigningKeyError(f"{kid} is the active signing key; rotate before retiring it")
            for name, key in self._files.items():
                if key.kid == kid:
                    os.unlink(self.directory / name)
                    self._sync_directory()
                    return
            raise SigningKeyError(f"no signing key {kid!r} in {self.directory}")


def _is_key_file(item: os.DirEntry[str]) -> bool:
    # names starting with '.' are ours: the lock and temporary files
    return not item.name.startswith(".") and item.name.endswith(".pem")


def _load(path: Path) -> SigningKey:
    """The key in file *path*; SigningKeyError or OSError if it is not a good key file."""
    match = _KEY_FILE.fullmatch(path.name)
    if match is None:
        raise SigningKeyError("not a keyring file name (<created>.<kid>.pem); create keys with rotate")
    stamp, kid = match.groups()
    with open(path, "rb") as file:
        data = file.read(_MAX_KEY_FILE_BYTES + 1)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise SigningKeyError("too large to be a signing key")
    created = datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)
    key = SigningKey.from_pem(data, created=created)
    if key.kid != kid:
        raise SigningKeyError(f"the key's thumbprint is {key.kid}, not the kid in its name")
    return key
