"""``private_key_jwt`` client authentication (RFC 7523 §2.2 and §3, RFC 7521 §4.2).

The client proves it holds a private key by sending a JWT it signed with it::

    client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
    client_assertion=<JWS compact serialisation>

Written against tokensmith's public plugin API only, as a third party would write it.

What is checked, in this order (any failure: ``invalid_client``, the same description
whatever failed, and the reason in the log for the operator):

1. The JWS header: ``alg`` one of ``Algorithms`` (ES256, RS256, PS256, EdDSA; never
   ``none`` nor an HMAC, which would need a shared secret), no ``crit`` (RFC 7515 §4.1.11: we
   understand no extension).
2. ``iss`` and ``sub`` are the same client_id (RFC 7523 §3 items 1 and 2), equal to the
   ``client_id`` parameter when one is sent (RFC 7521 §4.2), of a client registered for
   ``private_key_jwt``; its ``token_endpoint_auth_signing_alg``, if registered, is ``alg``.
3. The signature, with the client's registered keys: its ``jwks`` (including certificates
   registered as JWKs with ``x5c``, refused outside the certificate's validity), or the JWK
   Set at its ``jwks_uri``, fetched over HTTPS within one deadline for the whole exchange
   (``JwksUriTimeoutSeconds``), a size limit and a cache, one fetch per URL at a time, a
   failure remembered for a few seconds (directly: no redirects, and no proxy from the
   environment's ``https_proxy``, which would see which clients authenticate when). A ``kid`` in the header picks the key; an
   unknown ``kid`` refetches a ``jwks_uri`` once (the client may have rotated its keys),
   at most every ``JwksUriMinRefetchSeconds``.
4. ``aud`` contains the issuer or a URL of the token endpoint or of the endpoint being
   served (RFC 7523 §3 item 3).
5. ``exp`` is present and not past (item 4); the assertion lives at most
   ``MaxAssertionLifetimeSeconds``, counted from ``iat`` when present, else from now;
   ``nbf`` and ``iat`` are not in the future (items 5 and 6). ``ClockSkewSeconds`` of
   leeway each way.
6. ``jti`` is present and has not been seen for this client before (item 7), across every
   worker and restart: it is remembered in the server's shared state until the assertion
   expires (rounded up to the second). This check comes last, so that nobody can use up a
   client's ``jti`` values without its key; a request that also carries another client
   authentication (``Authorization`` or ``client_secret``), which the server refuses, is
   refused before it, so it does not use up the ``jti`` either. A request refused later,
   after authentication (a bad grant, say), has used it: the client authenticated.

Properties (identity.xml ``<Property name=...>``), all optional:

- ``Algorithms``: space-separated, default ``ES256 RS256 PS256 EdDSA``;
- ``MaxAssertionLifetimeSeconds``: default 300;
- ``ClockSkewSeconds``: default 30, at most 300;
- ``JwksUriTimeoutSeconds``: default 3 (keep it under ``<ListenerTimeoutSeconds>``);
- ``JwksUriMaxBytes``: default 65536;
- ``JwksUriCacheSeconds``: how long a fetched JWK Set is used, default 300;
- ``JwksUriMinRefetchSeconds``: default 30;
- ``JwksUriCAFile``: a PEM file of CA certificates that ``jwks_uri`` servers are verified
  against instead of the system's, relative to identity.xml's directory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import http.client
import io
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tokensmith import (
    AuthenticatedClient,
    ClientAuthRequest,
    InvalidClientError,
    InvalidClientMetadataError,
    Listener,
    client_metadata,
    hookimpl,
)

METHOD = "private_key_jwt"
#: RFC 7523 §2.2.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
#: The most an assertion may be: a JWT of a few claims is a few hundred bytes.
MAX_ASSERTION_CHARS = 16 * 1024
MIN_RSA_BITS = 2048
MAX_JTI_CHARS = 256

log = logging.getLogger("tokensmith.plugins.private_key_jwt")

_PROPERTIES = {
    "Algorithms",
    "MaxAssertionLifetimeSeconds",
    "ClockSkewSeconds",
    "JwksUriTimeoutSeconds",
    "JwksUriMaxBytes",
    "JwksUriCacheSeconds",
    "JwksUriMinRefetchSeconds",
    "JwksUriCAFile",
}


class Refused(Exception):
    """Why an assertion was refused: for the log, never for the caller."""


@dataclass
class Settings:
    algorithms: tuple[str, ...] = ALGORITHMS
    max_lifetime: int = 300
    skew: int = 30
    timeout: float = 3.0
    max_bytes: int = 65536
    cache_seconds: int = 300
    min_refetch: int = 30
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)


# -- configuration ---------------------------------------------------------------------------


def _number(props: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = props.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"property {name} must be a number, not {raw!r}") from None
    if not (low <= value <= high) or not math.isfinite(value):
        raise ValueError(f"property {name} must be between {low:g} and {high:g}, not {raw}")
    return value


@hookimpl
def listener_default_order() -> int:
    return 170


@hookimpl
def client_auth_methods() -> list[str]:
    return [METHOD]


@hookimpl
def listener_configure(listener: Listener) -> None:
    props = listener.properties
    unknown = set(props) - _PROPERTIES
    if unknown:
        raise ValueError(f"unknown properties: {', '.join(sorted(unknown))}")
    algorithms = tuple(props.get("Algorithms", " ".join(ALGORITHMS)).split())
    wrong = [alg for alg in algorithms if alg not in ALGORITHMS]
    if wrong or not algorithms:
        raise ValueError(
            f"Algorithms must be some of {', '.join(ALGORITHMS)}, not {' '.join(wrong) or 'none'}"
        )
    tls = ssl.create_default_context()
    if "JwksUriCAFile" in props:
        path = listener.resolve(props["JwksUriCAFile"])
        try:
            tls = ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"JwksUriCAFile {path}: {exc}") from None
    listener.stash["settings"] = Settings(
        algorithms=algorithms,
        max_lifetime=int(_number(props, "MaxAssertionLifetimeSeconds", 300, 1, 86400)),
        skew=int(_number(props, "ClockSkewSeconds", 30, 0, 300)),
        timeout=_number(props, "JwksUriTimeoutSeconds", 3, 0.1, 60),
        max_bytes=int(_number(props, "JwksUriMaxBytes", 65536, 1024, 1024 * 1024)),
        cache_seconds=int(_number(props, "JwksUriCacheSeconds", 300, 0, 86400)),
        min_refetch=int(_number(props, "JwksUriMinRefetchSeconds", 30, 0, 3600)),
        tls=tls,
    )
    listener.stash["jwks_cache"] = JwksCache()


def _settings(listener: Listener) -> Settings:
    return listener.stash["settings"]


@hookimpl
def server_metadata(listener: Listener) -> dict[str, Any]:
    """RFC 8414 §2: the algorithms this server takes for private_key_jwt, at every endpoint."""
    algorithms = list(_settings(listener).algorithms)
    return {
        "token_endpoint_auth_signing_alg_values_supported": algorithms,
        "introspection_endpoint_auth_signing_alg_values_supported": algorithms,
        "revocation_endpoint_auth_signing_alg_values_supported": algorithms,
    }


@hookimpl
def check_client_metadata(metadata: Mapping[str, Any], listener: Listener) -> None:
    """A private_key_jwt client needs keys to check its assertions: ``jwks`` (keys this
    plugin can use) or ``jwks_uri``; its ``token_endpoint_auth_signing_alg``, if any, must
    be one this server takes (RFC 7591 §2)."""
    settings = _settings(listener)
    alg = metadata.get("token_endpoint_auth_signing_alg")
    if alg is not None and alg not in settings.algorithms:
        raise InvalidClientMetadataError(
            f"token_endpoint_auth_signing_alg {alg!r} is not one of {', '.join(settings.algorithms)}"
        )
    if "jwks_uri" in metadata:
        return  # fetched when used: it may not be reachable from where the CLI runs
    keys = (metadata.get("jwks") or {}).get("keys") or []
    if not keys:
        raise InvalidClientMetadataError(
            "a private_key_jwt client needs its public keys: jwks (sp add --jwks FILE) or"
            " jwks_uri (--jwks-uri URL)"
        )
    for index, jwk in enumerate(keys):
        try:
            _public_key(jwk)
        except Refused as exc:
            raise InvalidClientMetadataError(f"jwks.keys[{index}]: {exc}") from None


# -- JWS (RFC 7515) and JWK (RFC 7517, RFC 7518 §6, RFC 8037) ---------------------------------


def _b64url(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise Refused("bad base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Refused("bad base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise Refused("base64url is not canonical")
    return data


def _int(text: Any) -> int:
    return int.from_bytes(_b64url(text), "big")


_CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}


def _public_key(jwk: Mapping[str, Any], now: float | None = None) -> Any:
    """The public key of *jwk*; a JWK with ``x5c`` is its certificate's key, refused when
    the certificate is outside its validity at *now* (Unix time; default: now)."""
    if not isinstance(jwk, Mapping):
        raise Refused("a JWK must be an object")
    if jwk.get("use", "sig") != "sig":
        raise Refused(f"key use {jwk.get('use')!r} is not sig")
    if "x5c" in jwk:
        try:
            der = base64.b64decode(jwk["x5c"][0], validate=True)
            cert = x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError, TypeError, IndexError, KeyError):
            raise Refused("x5c[0] is not a certificate") from None
        # The key of an expired certificate is not the client's any more (RFC 5280 §4.1.2.5).
        at = time.time() if now is None else now
        if not cert.not_valid_before_utc.timestamp() <= at <= cert.not_valid_after_utc.timestamp():
            raise Refused(
                f"x5c[0] is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to"
                f" {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, not now"
            )
        return cert.public_key()
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            curve, size = _CURVES[jwk["crv"]]
            x, y = _b64url(jwk["x"]), _b64url(jwk["y"])
            if len(x) != size or len(y) != size:
                raise Refused("EC coordinates of the wrong length")
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            ).public_key()
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
        if kty == "OKP":
            raw = _b64url(jwk["x"])
            if jwk.get("crv") == "Ed25519":
                return ed25519.Ed25519PublicKey.from_public_bytes(raw)
            if jwk.get("crv") == "Ed448":
                return ed448.Ed448PublicKey.from_public_bytes(raw)
            raise Refused(f"unsupported OKP curve {jwk.get('crv')!r}")
    except Refused:
        raise
    except (KeyError, TypeError, ValueError):
        raise Refused(f"malformed {kty} key") from None
    raise Refused(f"unsupported kty {kty!r}")


def _fits(alg: str, key: Any) -> bool:
    """Whether *key* is of the type *alg* signs with (RFC 7518 §3.1, RFC 8037 §3.1)."""
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if alg in ("RS256", "PS256"):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _verify(alg: str, key: Any, data: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            # RFC 7518 §3.4: R || S, 32 octets each.
            if len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256":
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            # RFC 7518 §3.5: MGF1 with SHA-256 and a salt as long as the hash.
            key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif alg == "EdDSA":
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Assertion:
    header: dict[str, Any]
    claims: dict[str, Any]
    signed: bytes
    signature: bytes


def _json(data: bytes) -> Any:
    """*data* as JSON; ``ValueError`` for anything else, including nesting too deep for the
    parser (a caller's ``[[[[...`` must be a refusal, not a ``RecursionError``)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _printable(value: object) -> str:
    """*value* for a log line: a caller chose it, so no control characters (which would
    forge log lines), no lone surrogates, and not too long."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= 200 else text[:200] + "..."


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: JSON allows "\ud800", UTF-8 does not
        return False
    return True


def _parse(text: str) -> Assertion:
    if len(text) > MAX_ASSERTION_CHARS:
        raise Refused("the assertion is too long")
    parts = text.split(".")
    if len(parts) != 3:
        raise Refused("not a JWS compact serialisation")
    try:
        header = _json(_b64url(parts[0]))
        claims = _json(_b64url(parts[1]))
    except ValueError:
        raise Refused("the header or the claims are not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Refused("the header or the claims are not JSON objects")
    return Assertion(header, claims, f"{parts[0]}.{parts[1]}".encode(), _b64url(parts[2]))


# -- jwks_uri ---------------------------------------------------------------------------------


class JwksCache:
    """Fetched JWK Sets by URL, per process; a failed fetch (a timeout too) is remembered
    for ``FAILED_FOR`` seconds, so that callers of one client cannot make the server fetch
    on every request.

    One fetch per URL at a time: concurrent requests for a URL being fetched wait for that
    fetch (never longer than its deadline) instead of starting their own, so that a slow
    ``jwks_uri`` holds at most one of the assertion threads, not all of them.
    """

    FAILED_FOR = 10

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[float, list[Any] | None]] = {}
        self._inflight: dict[str, threading.Event] = {}

    def _cached(self, url: str, settings: Settings, refresh: bool, now: float) -> list[Any] | None:
        cached = self._sets.get(url)
        if cached is None:
            return None
        fetched, keys = cached
        age = now - fetched
        fresh = age < (settings.cache_seconds if keys is not None else self.FAILED_FOR)
        if not fresh or (refresh and keys is not None and age >= settings.min_refetch):
            return None
        if keys is None:
            raise Refused(f"jwks_uri {_safe_url(url)} failed recently; not fetched again yet")
        return keys

    def keys(self, url: str, settings: Settings, *, refresh: bool = False) -> list[Any]:
        with self._lock:
            keys = self._cached(url, settings, refresh, time.monotonic())
            if keys is not None:
                return keys
            event = self._inflight.get(url)
            mine = event is None
            if mine:
                event = self._inflight[url] = threading.Event()
        assert event is not None
        if not mine:
            # Another thread is fetching this URL: its answer (or failure) is ours too.
            if not event.wait(settings.timeout + 1):
                raise Refused(f"jwks_uri {_safe_url(url)}: no answer within {settings.timeout:g} s")
            with self._lock:
                keys = self._cached(url, settings, False, time.monotonic())
            if keys is None:
                raise Refused(f"jwks_uri {_safe_url(url)}: not fetched")
            return keys
        try:
            try:
                keys = _fetch(url, settings)
            except Refused:
                with self._lock:
                    self._sets[url] = (time.monotonic(), None)
                raise
            with self._lock:
                self._sets[url] = (time.monotonic(), keys)
            return keys
        finally:
            with self._lock:
                del self._inflight[url]
            event.set()


def _safe_url(url: str) -> str:
    """*url* for a log line: without credentials, escaped, not too long."""
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            url = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
    except ValueError:
        pass
    return _printable(url)


class _Deadline:
    """What is left of one fetch's time: connect, TLS handshake, request and the whole
    answer share it, so that a server sending a byte at a time cannot stretch a fetch
    (a socket timeout alone restarts with every byte)."""

    def __init__(self, seconds: float, url: str):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.url = url

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise Refused(f"jwks_uri {_safe_url(self.url)}: no whole answer within {self.seconds:g} s")
        return left


class _Buffered:
    """A finished answer, as the socket ``http.client.HTTPResponse`` parses from."""

    def __init__(self, data: bytes):
        self._data = data

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> Any:
        return io.BytesIO(self._data)


def _fetch(url: str, settings: Settings) -> list[Any]:
    """GET the JWK Set at *url*: HTTPS only, no redirects, no proxy, within one deadline for
    the whole exchange and within the size limit.

    The answer is read whole, to the end of the connection (HTTP/1.0 without keep-alive)
    with the time left set before every read, then parsed; anything wrong with it
    (connection, TLS, status line, headers, body, JSON) is a refusal.
    """
    safe = _safe_url(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 443
    except ValueError:
        raise Refused(f"jwks_uri {safe} is not a URL") from None
    if parts.scheme != "https" or not host:
        raise Refused(f"jwks_uri {safe} is not an https URL")
    if parts.username is not None or parts.password is not None:
        raise Refused(f"jwks_uri {safe} has credentials in it")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(not c.isprintable() or c.isspace() for c in target + host):
        raise Refused(f"jwks_uri {safe} is not a URL")
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        authority += f":{port}"
    deadline = _Deadline(settings.timeout, url)
    # Headers are small; the body is at most max_bytes.
    limit = settings.max_bytes + 16384
    data = bytearray()
    try:
        raw = socket.create_connection((host, port), timeout=deadline.left())
        try:
            raw.settimeout(deadline.left())
            # The handshake's timeout bounds the whole handshake.
            with settings.tls.wrap_socket(raw, server_hostname=host) as sock:
                sock.settimeout(deadline.left())
                sock.sendall(
                    f"GET {target} HTTP/1.0\r\nHost: {authority}\r\n"
                    "Accept: application/jwk-set+json, application/json\r\n"
                    "Connection: close\r\nUser-Agent: tokensmith-private-key-jwt\r\n\r\n".encode("ascii")
                )
                while len(data) <= limit:
                    sock.settimeout(deadline.left())
                    chunk = sock.recv(min(16384, limit + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
        finally:
            raw.close()
    except Refused:
        raise
    except TimeoutError:  # the time left ran out inside a read
        raise Refused(f"jwks_uri {safe}: no whole answer within {settings.timeout:g} s") from None
    except (OSError, ValueError, UnicodeError) as exc:
        raise Refused(f"jwks_uri {safe}: {_printable(exc)}") from None
    if len(data) > limit:
        raise Refused(f"jwks_uri {safe}: the JWK Set is larger than {settings.max_bytes} bytes")
    response = http.client.HTTPResponse(_Buffered(bytes(data)))  # type: ignore[arg-type]
    try:
        response.begin()
        if response.status != 200:
            raise Refused(f"jwks_uri {safe} answered {response.status}")
        body = response.read(settings.max_bytes + 1)
    except Refused:
        raise
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise Refused(f"jwks_uri {safe}: not an HTTP answer ({type(exc).__name__})") from None
    if len(body) > settings.max_bytes:
        raise Refused(f"jwks_uri {safe}: the JWK Set is larger than {settings.max_bytes} bytes")
    try:
        keys = _json(body)["keys"]
    except (ValueError, KeyError, TypeError):
        raise Refused(f"jwks_uri {safe}: not a JWK Set") from None
    if not isinstance(keys, list):
        raise Refused(f"jwks_uri {safe}: not a JWK Set")
    return keys


# -- authentication ---------------------------------------------------------------------------


def _candidates(keys: list[Any], header: Mapping[str, Any], alg: str) -> list[Any]:
    """The keys that may have signed: the one named by ``kid``, else all of *alg*'s type."""
    kid = header.get("kid")
    found = []
    for jwk in keys:
        if not isinstance(jwk, Mapping) or (kid is not None and jwk.get("kid") != kid):
            continue
        if jwk.get("alg", alg) != alg:
            continue
        try:
            key = _public_key(jwk)
        except Refused:
            continue  # one unusable key in a set does not spoil the others
        if _fits(alg, key):
            found.append(key)
    return found


def _check_claims(
    claims: Mapping[str, Any], request: ClientAuthRequest, settings: Settings, now: float
) -> float:
    """RFC 7523 §3 items 3 to 6; the time until which the ``jti`` must be remembered."""
    context = request.context
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences
    accepted = {context.issuer, *context.endpoint_urls, *context.token_endpoint_urls}
    if not isinstance(audiences, list) or not accepted.intersection(
        a for a in audiences if isinstance(a, str)
    ):
        raise Refused(f"aud {claims.get('aud')!r:.200} names neither the issuer nor the endpoint")
    times = {}
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(f"{name} is not a NumericDate")
        try:
            number = float(value)
        except OverflowError:  # an int such as 10**400, which JSON allows
            raise Refused(f"{name} is not a NumericDate (out of range)") from None
        if not math.isfinite(number):
            raise Refused(f"{name} is not a NumericDate")
        times[name] = number
    if "exp" not in times:
        raise Refused("exp is missing")
    exp, skew = times["exp"], settings.skew
    if exp <= now - skew:
        raise Refused(f"expired {now - exp:.0f} s ago")
    if times.get("nbf", now) > now + skew:
        raise Refused("nbf is in the future")
    if times.get("iat", now) > now + skew:
        raise Refused("iat is in the future")
    if exp - times.get("iat", now) > settings.max_lifetime + skew:
        raise Refused(f"lives longer than {settings.max_lifetime} s (MaxAssertionLifetimeSeconds)")
    return exp + skew


def _authenticate(request: ClientAuthRequest, listener: Listener) -> AuthenticatedClient:
    settings = _settings(listener)
    text = request.form.get("client_assertion")
    if text is None:
        raise Refused("client_assertion is missing")
    assertion = _parse(text)
    alg = assertion.header.get("alg")
    if alg not in settings.algorithms:
        raise Refused(f"alg {alg!r:.40} is not one of {', '.join(settings.algorithms)}")
    if "crit" in assertion.header:
        raise Refused("crit header parameters are not understood")
    if not isinstance(assertion.header.get("kid", ""), str):
        raise Refused("kid is not a string")
    claims = assertion.claims
    client_id = claims.get("sub")
    if not isinstance(client_id, str) or claims.get("iss") != client_id:
        raise Refused("iss and sub are not the same client_id")
    if not _utf8(client_id):
        raise Refused(f"sub {_printable(client_id)} is not a client_id (not UTF-8)")
    if request.form.get("client_id", client_id) != client_id:
        raise Refused("the client_id parameter is not the assertion's sub", client_id)
    client = request.get_client(client_id)
    if client is None:
        raise Refused("no such client", client_id)
    if client.token_endpoint_auth_method != METHOD:
        raise Refused(f"the client is registered for {client.token_endpoint_auth_method}", client_id)
    metadata = client_metadata(client)
    registered_alg = metadata.get("token_endpoint_auth_signing_alg")
    if registered_alg is not None and alg != registered_alg:
        raise Refused(
            f"alg {alg} is not the registered token_endpoint_auth_signing_alg {registered_alg}", client_id
        )
    url = metadata.get("jwks_uri")
    try:
        if url is not None:
            cache: JwksCache = listener.stash["jwks_cache"]
            keys = _candidates(cache.keys(url, settings), assertion.header, alg)
            if not keys and "kid" in assertion.header:
                keys = _candidates(cache.keys(url, settings, refresh=True), assertion.header, alg)
        else:
            keys = _candidates((metadata.get("jwks") or {}).get("keys", []), assertion.header, alg)
    except Refused as exc:
        raise Refused(str(exc), client_id) from None
    if not keys:
        kid = assertion.header.get("kid")
        raise Refused(
            f"no registered {alg} key" + (f" with kid {kid!r:.80}" if kid is not None else ""), client_id
        )
    if not any(_verify(alg, key, assertion.signed, assertion.signature) for key in keys):
        raise Refused("the signature does not verify with the client's keys", client_id)
    now = time.time()
    try:
        remember_until = _check_claims(claims, request, settings, now)
    except Refused as exc:
        raise Refused(str(exc), client_id) from None
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS or not _utf8(jti):
        raise Refused("jti is missing (or not a UTF-8 string of at most 256 characters)", client_id)
    if request.authorization is not None or "client_secret" in request.form:
        # The server refuses a request that authenticates twice (400): say so before the
        # jti is used up, so that such a request leaves the assertion usable.
        raise Refused("the request uses another authentication method too", client_id)
    key = "jti:" + hashlib.sha256(f"{client_id}\0{jti}".encode()).hexdigest()
    # Remembered for as long as the assertion is accepted, to the second after exp + skew:
    # the store keeps whole seconds, and rounding down would let a replay in the last one.
    if not listener.state.put_if_absent(key, math.ceil(remember_until)):
        raise Refused(f"jti {_printable(jti)[:80]} was used before (a replayed assertion)", client_id)
    return AuthenticatedClient(client, METHOD)


#: Threads for assertions (a jwks_uri fetch blocks): as many as the server gives plain ``def``
#: hooks. Made on first use, so that a worker forked from the supervisor has its own.
ASSERTION_THREADS = 16
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                ASSERTION_THREADS, thread_name_prefix="private-key-jwt"
            )
        return _pool


@hookimpl
async def authenticate_client(request: ClientAuthRequest, listener: Listener) -> AuthenticatedClient | None:
    """Engage for ``client_assertion_type`` jwt-bearer (RFC 7521 §4.2); otherwise not mine.

    Every token request reaches this hook, and most are not ours: they are declined here, on
    the event loop, at no cost. An assertion is checked in a thread, since it may fetch a
    ``jwks_uri``, which blocks; the server's deadline for the hook (``ListenerTimeoutSeconds``)
    bounds the wait for it.
    """
    if request.form.get("client_assertion_type") != ASSERTION_TYPE:
        return None
    return await asyncio.get_running_loop().run_in_executor(_threads(), _check_assertion, request, listener)


def _check_assertion(request: ClientAuthRequest, listener: Listener) -> AuthenticatedClient:
    """``_authenticate``, its refusal logged and turned into ``invalid_client``."""
    try:
        return _authenticate(request, listener)
    except Refused as exc:
        claimed = exc.args[1] if len(exc.args) > 1 else None
        # The caller learns only that authentication failed: which check it was would tell
        # an unauthenticated caller which client_ids exist and how each is registered.
        # Both come from the caller (sub, kid, jti, ...): escaped, so that a newline or a
        # NUL in them cannot forge a log line.
        who = _printable(claimed) if claimed is not None else "(unknown)"
        why = _printable(exc.args[0])
        log.warning("private_key_jwt: client %s refused: %s", who, why)
        raise InvalidClientError(
            "client authentication failed",
            client_id=claimed,
            reason="private_key_jwt_refused",
            detail=f"private_key_jwt: client {who} refused: {why}",
        ) from None
