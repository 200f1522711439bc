"""Mutual-TLS facts of RFC 8705 that are not X.509 in general: client certificates that a
TLS-terminating proxy forwards in a header.

- ``parse_forwarded_certificate`` and ``parse_forwarded_chain``: a certificate and its chain
  forwarded by a TLS-terminating proxy (RFC 9440, RFC 8705 §6.5). Whether that proxy is
  trusted is the caller's decision (``client_certificates`` in ``oauth/clientauth.py``).

The X.509 work underneath (parsing, names, chains) is ``security/x509.py``; the token binding
thumbprint, ``x5t_s256`` (RFC 8705 §3.1), is ``security/jose.py``. Every function refuses bad
input with ``CertificateError`` and nothing else, and bounds its work before parsing (RFC 8705
§7.5 warns about X.509 parsing complexity).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from tokensmith.config.table import setting
from tokensmith.security.x509 import (
    MAX_INTERMEDIATES,
    CertificateError,
    decode_base64,
    parse_der_certificate,
    pem_certificate_ders,
)

__all__ = ["FORWARDED_FORMATS", "MAX_HEADER_CHARS", "parse_forwarded_certificate", "parse_forwarded_chain"]

# One PEM certificate of MAX_CERTIFICATE_BYTES, percent-encoded, stays below this.
MAX_HEADER_CHARS = 64 * 1024
#: The encodings of ``<ClientCertificateHeader format>``, as config/table.py lists them.
FORWARDED_FORMATS = setting("identity.xml", "OAuth/ClientCertificateHeader", "format").choices


# --- certificates forwarded by a proxy ---------------------------------------------------


def _percent_decode(value: str) -> str:
    """Strict percent-decoding that keeps '+' (a base64 character), unlike form decoding."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", value):
        raise CertificateError("forwarded certificate: bad percent-encoding")
    try:
        return unquote_to_bytes(value).decode("ascii")
    except UnicodeDecodeError:
        raise CertificateError("forwarded certificate: not ASCII after percent-decoding") from None


def _one_pem_certificate(text: str) -> bytes:
    ders = pem_certificate_ders(text, "forwarded certificate")
    if len(ders) != 1:
        raise CertificateError(
            f"forwarded certificate: expected exactly one PEM CERTIFICATE, found {len(ders)}"
        )
    return ders[0]


def parse_forwarded_certificate(value: str, fmt: str) -> bytes:
    """The DER of the leaf certificate in a proxy's header *value*, in format *fmt*.

    - ``rfc9440``: the ``Client-Cert`` field, an RFC 8941 Byte Sequence ``:BASE64-DER:``
      (RFC 9440 §2.1, §2.2); parameters are not accepted.
    - ``nginx``: ``$ssl_client_escaped_cert``, percent-encoded PEM. Decoded strictly, and a
      literal '+' stays '+' (form decoding would turn it into a space and break base64).
    - ``pem``: PEM whose newlines a proxy turned into spaces, or into literal ``\\n``; any
      whitespace and ``\\n``, ``\\r``, ``\\t`` escapes inside the base64 are ignored.
    - ``base64-der``: the DER in standard base64 (HAProxy's ``ssl_c_der,base64``).
    - ``auto``: ``rfc9440`` if it starts with ':', ``nginx`` if it contains '%', ``pem`` if
      it contains '-----BEGIN', else ``base64-der``; these never overlap.

    The value must hold exactly one certificate that parses. Anything else, or more than
    ``MAX_HEADER_CHARS`` characters, raises ``CertificateError``.
    """
    if fmt not in FORWARDED_FORMATS:
        raise CertificateError(
            f"unknown forwarded-certificate format {fmt!r}; expected one of {', '.join(FORWARDED_FORMATS)}"
        )
    if len(value) > MAX_HEADER_CHARS:
        raise CertificateError(f"forwarded certificate: header longer than {MAX_HEADER_CHARS}")
    if not value.isascii():
        raise CertificateError("forwarded certificate: not ASCII")
    value = value.strip(" \t")
    if not value:
        raise CertificateError("forwarded certificate: empty header")
    if fmt == "auto":
        fmt = (
            "rfc9440"
            if value.startswith(":")
            else "nginx"
            if "%" in value
            else "pem"
            if "-----BEGIN" in value
            else "base64-der"
        )
    if fmt == "rfc9440":
        m = re.fullmatch(r":([^:]*):", value)
        if not m:
            raise CertificateError("forwarded certificate: not an RFC 8941 byte sequence ':...:'")
        der = decode_base64(m.group(1), "forwarded certificate")
    elif fmt == "nginx":
        der = _one_pem_certificate(_percent_decode(value))
    elif fmt == "pem":
        der = _one_pem_certificate(value)
    else:
        der = decode_base64(value, "forwarded certificate")
    parse_der_certificate(der, "forwarded certificate")
    return der


def parse_forwarded_chain(value: str) -> list[bytes]:
    """The DER of each certificate in an RFC 9440 §2.3 ``Client-Cert-Chain`` *value*.

    The field is an RFC 8941 List of Byte Sequences (§3.1, §3.3.5), the issuer of the leaf
    first; several field lines are one list joined with ',' (RFC 9110 §5.3). Parameters are
    not accepted. At most ``MAX_INTERMEDIATES`` certificates, as in a TLS handshake; each
    must parse. Anything else raises ``CertificateError``.
    """
    if len(value) > MAX_INTERMEDIATES * MAX_HEADER_CHARS:
        raise CertificateError("forwarded certificate chain: header too long")
    if not value.isascii():
        raise CertificateError("forwarded certificate chain: not ASCII")
    members = [member.strip(" \t") for member in value.split(",")]
    if members == [""]:
        return []
    if len(members) > MAX_INTERMEDIATES:
        raise CertificateError(
            f"forwarded certificate chain: {len(members)} certificates; "
            f"at most {MAX_INTERMEDIATES} are accepted"
        )
    ders = []
    for n, member in enumerate(members, 1):
        m = re.fullmatch(r":([^:]*):", member)
        if not m:
            raise CertificateError("forwarded certificate chain: not an RFC 8941 list of byte sequences")
        der = decode_base64(m.group(1), f"forwarded chain certificate {n}")
        parse_der_certificate(der, f"forwarded chain certificate {n}")
        ders.append(der)
    return ders
