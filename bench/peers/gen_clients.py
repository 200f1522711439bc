#!/usr/bin/env python3
"""Generate mutual-TLS benchmark clients for the reference peers (and, later, tokensmith).

    .venv/bin/python bench/peers/gen_clients.py OUTDIR --count N [--real 32]

Every client is ``self_signed_tls_client_auth`` with one self-signed EC P-256 certificate.
Only the first ``--real`` clients (default 32, at most N) get a key file of their own: those are
the ones a load generator presents. The other N - real certificates are only registered: they
share one key pair, but each has its own serial number and subject (CN=bench-client-NNNNNN), so
every DER, and so every SHA-256 thumbprint, differs.

Files written to OUTDIR (existing ones are replaced, except server.crt/server.key):

  server.crt, server.key    EC P-256 server certificate for 127.0.0.1 / localhost, self-signed
                            (use it as --cacert); kept if already there
  certs/CLIENT_ID.crt/.key  the real clients' certificate and key (PEM)
  loadgen-certs.txt         "certpath keypath" per real client (loadgen --cert-list format)
  loadgen-clients.txt       "certpath keypath client_id" per real client
  client-certs.pem          the real clients' certificates concatenated (a CA file for
                            verify-mode peers such as bare_hypercorn)
  node-oidc-clients.json    a JSON array of oidc-provider client metadata (CLIENTS_FILE)
  clients.jsonl             one JSON object per client, for other loaders:
                            {"client_id", "token_endpoint_auth_method", "x5t#S256",
                             "cert_der_b64", "cert_file", "key_file"}  (files null unless real)
  meta.json                 count, real, timings
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AUTH_METHOD = "self_signed_tls_client_auth"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def client_id(i: int) -> str:
    return f"mtls-{i:06d}"


def ec_public_jwk(key: ec.EllipticCurvePrivateKey) -> dict:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}


def self_signed(key, subject_cn: str, serial: int, not_before, not_after, *, server=False):
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokensmith-bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name)
               .public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        import ipaddress
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                       x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(key, hashes.SHA256())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_server_cert(out: Path, not_before, not_after) -> None:
    crt, key_file = out / "server.crt", out / "server.key"
    if crt.exists() and key_file.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "127.0.0.1", x509.random_serial_number(), not_before, not_after,
                       server=True)
    write_private(key_file, key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", "-n", type=int, required=True,
                        help="number of registered mutual-TLS clients")
    parser.add_argument("--real", type=int, default=32,
                        help="clients with their own key file (default 32, capped at --count)")
    parser.add_argument("--days", type=int, default=3650, help="certificate validity")
    args = parser.parse_args(argv)
    if args.count < 1 or args.real < 1:
        parser.error("--count and --real must be at least 1")
    real = min(args.real, args.count)

    t0 = time.perf_counter()
    out: Path = args.outdir
    certs_dir = out / "certs"
    certs_dir.mkdir(parents=True, exist_ok=True)
    for stale in certs_dir.glob("mtls-*"):
        stale.unlink()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=args.days)
    ensure_server_cert(out, not_before, not_after)

    shared_key = ec.generate_private_key(ec.SECP256R1())
    shared_jwk = ec_public_jwk(shared_key)
    # Serial numbers: a random 64-bit base per run plus the index, so they are distinct here
    # and unlikely to repeat across runs; positive and below 2**159 as RFC 5280 asks.
    serial_base = int.from_bytes(os.urandom(8), "big") << 24

    loadgen_lines, loadgen_id_lines, ca_pems = [], [], []
    t_certs = 0.0
    with open(out / "node-oidc-clients.json", "w") as node_json, \
            open(out / "clients.jsonl", "w") as plain:
        node_json.write("[\n")
        for i in range(args.count):
            cid = client_id(i)
            ts = time.perf_counter()
            if i < real:
                key = ec.generate_private_key(ec.SECP256R1())
                jwk = ec_public_jwk(key)
            else:
                key, jwk = shared_key, shared_jwk
            cert = self_signed(key, f"bench-client-{i:06d}", serial_base + i,
                               not_before, not_after)
            der = cert.public_bytes(serialization.Encoding.DER)
            t_certs += time.perf_counter() - ts
            der_b64 = base64.b64encode(der).decode()
            cert_file = key_file = None
            if i < real:
                cert_file, key_file = certs_dir / f"{cid}.crt", certs_dir / f"{cid}.key"
                pem = cert.public_bytes(serialization.Encoding.PEM)
                cert_file.write_bytes(pem)
                write_private(key_file, key_pem(key))
                ca_pems.append(pem)
                cert_file, key_file = str(cert_file.resolve()), str(key_file.resolve())
                loadgen_lines.append(f"{cert_file} {key_file}\n")
                loadgen_id_lines.append(f"{cert_file} {key_file} {cid}\n")
            node_client = {
                "client_id": cid,
                "token_endpoint_auth_method": AUTH_METHOD,
                "tls_client_certificate_bound_access_tokens": True,
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
                "jwks": {"keys": [dict(jwk, x5c=[der_b64])]},
            }
            node_json.write(("," if i else "") + json.dumps(node_client, separators=(",", ":"))
                            + "\n")
            plain.write(json.dumps({
                "client_id": cid,
                "token_endpoint_auth_method": AUTH_METHOD,
                "x5t#S256": b64url(hashlib.sha256(der).digest()),
                "cert_der_b64": der_b64,
                "cert_file": cert_file,
                "key_file": key_file,
            }, separators=(",", ":")) + "\n")
        node_json.write("]\n")

    (out / "loadgen-certs.txt").write_text("".join(loadgen_lines))
    (out / "loadgen-clients.txt").write_text("".join(loadgen_id_lines))
    (out / "client-certs.pem").write_bytes(b"".join(ca_pems))
    total = time.perf_counter() - t0
    meta = {"count": args.count, "real": real, "auth_method": AUTH_METHOD,
            "client_id_format": "mtls-%06d", "seconds_total": round(total, 3),
            "seconds_building_certs": round(t_certs, 3)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"gen_clients: {args.count} clients ({real} with keys) in {out} "
          f"in {total:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
