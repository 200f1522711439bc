"""Request a client certificate at the TLS layer and accept whichever one the client proves.

RFC 8705 §2 leaves trust to the authorization server: a PKI client (``tls_client_auth``) is
checked against its registered subject, a self-signed one (``self_signed_tls_client_auth``)
against its registered certificates. OpenSSL's verify store cannot make that per-client decision:
self-signed certificates that share a subject DN collide in it, and loading thousands of them is
slow. So the handshake only proves possession of the
key (CertificateVerify) and the application decides trust from :func:`peer_certificate_chain`.

Accepting any certificate would let an anonymous client choose what the server's CPU verifies:
OpenSSL checks CertificateVerify with whatever key the leaf holds, and an RSA key with a
public exponent thousands of bits long makes each handshake several times as expensive. So the
callback, which OpenSSL runs on the Certificate message before it reads CertificateVerify,
refuses a chain with a key no client needs (:func:`acceptable_key`; the CAs' keys too, which
the mutual_tls listener later checks signatures with), and a chain longer than ``MAX_CHAIN``;
the handshake then fails.

Python's ``ssl`` has no verify-callback API. We set OpenSSL's ``SSL_CTX_set_cert_verify_callback``
through ``ctypes`` on the ``SSL_CTX`` that CPython's ``_ssl`` owns, using the libssl that ``_ssl``
itself is linked with, and check at configuration time that it took effect, so that a change in
CPython or OpenSSL fails loudly at startup instead of silently accepting or rejecting clients.
"""

from __future__ import annotations

import _ssl
import ctypes
import datetime
import functools
import os
import ssl
import tempfile

__all__ = ["accept_any_client_certificate", "peer_certificate_chain"]

# CPython 3.10-3.13 _ssl.c: `typedef struct { PyObject_HEAD SSL_CTX *ctx; ...} PySSLContext`,
# so the SSL_CTX* follows the object header, whose size object.__basicsize__ gives for this build.
_SSL_CTX_OFFSET = object.__basicsize__
_SSL_VERIFY_PEER, _SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x01, 0x02

# int (*cb)(X509_STORE_CTX *, void *arg): 1 accepts the chain without building or checking it.
_CertVerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


#: EVP_PKEY base ids (OpenSSL's NIDs) and the EC groups whose keys a client may hold.
_EVP_PKEY_RSA, _EVP_PKEY_RSA_PSS, _EVP_PKEY_EC, _EVP_PKEY_ED25519, _EVP_PKEY_ED448 = 6, 912, 408, 1087, 1088
_CURVES = (b"prime256v1", b"secp384r1", b"secp521r1")
#: The RSA moduli accepted: the cost of a signature check grows with the size, and below
#: 2048 bits a key is too weak to authenticate anyone (NIST SP 800-131A).
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 4096
#: The most certificates a client may send: its leaf, the 8 intermediates the mutual_tls
#: listener validates at most, and a root. Each one sent is parsed during the handshake.
MAX_CHAIN = 10
_X509_V_ERR_CERT_REJECTED = 28


def acceptable_key(lib: ctypes.CDLL, pkey: int) -> bool:
    """Whether a client's certificate key is one a client needs: RSA of ``MIN_RSA_BITS`` to
    ``MAX_RSA_BITS`` with the
    public exponent 65537 (what every CA and key generator uses), ECDSA on P-256, P-384 or P-521,
    Ed25519 or Ed448. Anything else could only make the handshake's signature check costly.
    An EC key must name its curve (RFC 5480 §2.1.1): explicit parameters are refused even when
    OpenSSL recognises them as a named curve."""
    kind = lib.EVP_PKEY_get_base_id(pkey)
    if kind in (_EVP_PKEY_RSA, _EVP_PKEY_RSA_PSS):
        if not MIN_RSA_BITS <= lib.EVP_PKEY_get_bits(pkey) <= MAX_RSA_BITS:
            return False
        exponent = ctypes.c_void_p()
        if lib.EVP_PKEY_get_bn_param(pkey, b"e", ctypes.byref(exponent)) != 1:
            return False
        try:
            return lib.BN_num_bits(exponent) <= 17 and lib.BN_get_word(exponent) == 65537
        finally:
            lib.BN_free(exponent)
    if kind == _EVP_PKEY_EC:
        explicit = ctypes.c_int(0)
        if lib.EVP_PKEY_get_int_param(pkey, b"decoded-from-explicit", ctypes.byref(explicit)) != 1:
            return False
        if explicit.value:
            return False
        name = ctypes.create_string_buffer(64)
        size = ctypes.c_size_t()
        if lib.EVP_PKEY_get_group_name(pkey, name, len(name), ctypes.byref(size)) != 1:
            return False
        return name.value in _CURVES
    return kind in (_EVP_PKEY_ED25519, _EVP_PKEY_ED448)


def _accept(store_ctx: int | None, arg: int | None) -> int:
    # 1 accepts the chain: the store context's error stays X509_V_OK, so SSL_get_verify_result()
    # reports success. No signature is checked here, but every key is looked at: the leaf's
    # checks CertificateVerify, and the CAs' the chain, when the mutual_tls listener validates it.
    lib = _libssl()
    sent = lib.X509_STORE_CTX_get0_untrusted(store_ctx)  # the leaf and what came with it
    count = lib.OPENSSL_sk_num(sent) if sent else 0
    if 0 < count <= MAX_CHAIN:
        for index in range(count):
            pkey = lib.X509_get0_pubkey(lib.OPENSSL_sk_value(sent, index))
            if not pkey or not acceptable_key(lib, pkey):
                break
        else:
            return 1
    lib.X509_STORE_CTX_set_error(store_ctx, _X509_V_ERR_CERT_REJECTED)
    return 0


# One thunk for the whole process, never freed. An SSL_CTX is reference-counted in C and can
# outlive its Python wrapper (every SSL* made from it holds a reference), so tying the thunk's
# lifetime to the SSLContext (a WeakKeyDictionary entry or an attribute) could leave OpenSSL
# calling freed memory. The callback has no per-context state, so sharing it costs nothing.
_ACCEPT_ANY = _CertVerifyCallback(_accept)


@functools.cache
def _libssl() -> ctypes.CDLL:
    """The libssl that ``_ssl`` calls, with the prototypes this module uses.

    ``dlopen`` of the already loaded ``_ssl`` extension returns its existing handle, and ``dlsym``
    on that handle searches ``_ssl``'s own dependencies, so these are the functions ``_ssl`` calls.
    """
    path = getattr(_ssl, "__file__", None)
    if path is None:
        raise RuntimeError("tls_accept: _ssl is built into the interpreter; cannot reach libssl")
    try:
        lib = ctypes.CDLL(path)
        for name, restype, argtypes in (
            ("OpenSSL_version_num", ctypes.c_ulong, []),
            ("SSL_CTX_get_options", ctypes.c_uint64, [ctypes.c_void_p]),  # OpenSSL 3.x
            ("SSL_CTX_get_verify_mode", ctypes.c_int, [ctypes.c_void_p]),
            (
                "SSL_CTX_set_cert_verify_callback",
                None,
                [ctypes.c_void_p, _CertVerifyCallback, ctypes.c_void_p],
            ),
            ("X509_STORE_CTX_set_error", None, [ctypes.c_void_p, ctypes.c_int]),
            ("X509_get0_pubkey", ctypes.c_void_p, [ctypes.c_void_p]),
            ("EVP_PKEY_get_base_id", ctypes.c_int, [ctypes.c_void_p]),
            (
                "EVP_PKEY_get_int_param",
                ctypes.c_int,
                [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)],
            ),
            ("X509_STORE_CTX_get0_untrusted", ctypes.c_void_p, [ctypes.c_void_p]),
            ("OPENSSL_sk_num", ctypes.c_int, [ctypes.c_void_p]),
            ("OPENSSL_sk_value", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
            ("EVP_PKEY_get_bits", ctypes.c_int, [ctypes.c_void_p]),
            (
                "EVP_PKEY_get_bn_param",
                ctypes.c_int,
                [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)],
            ),
            (
                "EVP_PKEY_get_group_name",
                ctypes.c_int,
                [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)],
            ),
            ("BN_num_bits", ctypes.c_int, [ctypes.c_void_p]),
            ("BN_get_word", ctypes.c_ulong, [ctypes.c_void_p]),
            ("BN_free", None, [ctypes.c_void_p]),
        ):
            getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"tls_accept: cannot reach OpenSSL through {path}: {exc}") from exc
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise RuntimeError(
            f"tls_accept: {path} resolves OpenSSL {lib.OpenSSL_version_num():#x}, but ssl reports "
            f"{ssl.OPENSSL_VERSION_NUMBER:#x} ({ssl.OPENSSL_VERSION})"
        )
    return lib


def _configure(context: ssl.SSLContext, required: bool) -> None:
    lib = _libssl()
    ctx = ctypes.c_void_p.from_address(id(context) + _SSL_CTX_OFFSET).value
    # A pointer that is not this context's SSL_CTX would almost surely disagree on the options.
    if not ctx or lib.SSL_CTX_get_options(ctx) != int(context.options):
        raise RuntimeError(
            "tls_accept: cannot find the SSL_CTX in ssl.SSLContext: CPython's PySSLContext layout has changed"
        )
    lib.SSL_CTX_set_cert_verify_callback(ctx, _ACCEPT_ANY, None)
    # Python's setter calls SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER [| FAIL_IF_NO_PEER_CERT], cb)
    # keeping the (NULL) per-certificate callback; reading it back through our pointer proves
    # that we and _ssl talk about the same SSL_CTX.
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    expected = _SSL_VERIFY_PEER | (_SSL_VERIFY_FAIL_IF_NO_PEER_CERT if required else 0)
    if lib.SSL_CTX_get_verify_mode(ctx) != expected:
        raise RuntimeError("tls_accept: SSL_CTX verify mode did not take effect")


def accept_any_client_certificate(context: ssl.SSLContext, *, required: bool) -> None:
    """Make a server ``context`` request a client certificate and accept any the client proves.

    ``required=False`` is clientAuth "want": a client may send no certificate. ``required=True``
    is "need": a client that sends none fails the handshake. A client that sends one must prove
    its private key (CertificateVerify, which OpenSSL checks as usual), but no chain is built or
    verified against any store, so same-subject certificates do not collide and the handshake
    cost does not depend on how many clients are registered. Trust is the caller's decision,
    made from :func:`peer_certificate_chain` after the handshake.

    Call it as the last step of configuring ``context``: setting ``context.verify_mode`` afterwards
    changes whether a certificate is requested (``CERT_NONE`` stops asking). The accept-all
    callback survives that and ``load_verify_locations`` (which it makes irrelevant), but it is
    per ``SSL_CTX``: a context switched to from ``sni_callback`` needs this call too.

    Before touching ``context`` this runs an in-memory handshake on a throwaway context with
    throwaway certificates, and afterwards checks ``context``'s verify mode through OpenSSL.
    Raises ``RuntimeError`` if the mechanism does not work on this CPython/OpenSSL.
    """
    # Checked first: _configure reads raw memory at a fixed offset into the object.
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("accept_any_client_certificate needs a server-side SSLContext")
    _self_test()
    _configure(context, required)


def peer_certificate_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """DER of the certificates the peer sent, leaf first; ``[]`` if it sent none.

    These are unverified: with :func:`accept_any_client_certificate` the handshake only proves
    that the peer holds the leaf's private key. Python 3.13 has ``get_unverified_chain()``;
    3.10-3.12 have the same C method on the private ``_sslobj``. On the server side OpenSSL's
    ``SSL_get_peer_cert_chain`` omits the leaf, and a resumed session may keep only the leaf, so
    the leaf from ``getpeercert(binary_form=True)`` is put first whenever it is missing.
    """
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return []
    if hasattr(ssl_object, "get_unverified_chain"):
        chain = list(ssl_object.get_unverified_chain())
    else:
        certs = ssl_object._sslobj.get_unverified_chain() or ()  # type: ignore[union-attr]
        chain = [cert.public_bytes(_ssl.ENCODING_DER) for cert in certs]
    if not chain or chain[0] != leaf:
        chain.insert(0, leaf)
    return chain


def _self_test() -> None:
    """Handshake in memory with a self-signed client leaf plus an intermediate; check both."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def cert(
        name: str, key: ec.EllipticCurvePrivateKey, issuer_name: str, issuer_key: ec.EllipticCurvePrivateKey
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        cn = x509.NameOID.COMMON_NAME
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(cn, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(cn, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(minutes=5))
            .sign(issuer_key, hashes.SHA256())
        )

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    server_cert = cert("self-test server", keys[0], "self-test server", keys[0])
    middle = cert("self-test CA", keys[1], "self-test CA", keys[1])
    leaf = cert("self-test client", keys[2], "self-test CA", keys[1])

    def pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
        if isinstance(item, x509.Certificate):
            return item.public_bytes(serialization.Encoding.PEM)
        return item.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with tempfile.TemporaryDirectory() as tmp:
        for context, items in ((server, (server_cert, keys[0])), (client, (leaf, middle, keys[2]))):
            with open(path := os.path.join(tmp, "chain.pem"), "wb") as f:
                f.write(b"".join(pem(item) for item in items))
            context.load_cert_chain(path)
    _configure(server, required=True)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s, c = server.wrap_bio(s_in, s_out, server_side=True), client.wrap_bio(c_in, c_out)
    done = {s: False, c: False}
    try:
        for _ in range(10):
            for obj, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
                try:
                    obj.do_handshake()
                    done[obj] = True
                except ssl.SSLWantReadError:
                    pass
                peer_in.write(out.read())
            if all(done.values()):
                break
    except ssl.SSLError as exc:
        raise RuntimeError(f"tls_accept: self-test handshake failed: {exc}") from exc
    sent = [cert.public_bytes(serialization.Encoding.DER) for cert in (leaf, middle)]
    if not all(done.values()) or peer_certificate_chain(s) != sent:
        raise RuntimeError("tls_accept: self-test did not see the client's certificate chain")
