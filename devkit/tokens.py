"""Credentials for the gateway: signing keys, the JWKS file the gateway verifies with, tokens, a test certificate.

    python -m devkit.tokens keygen --kid 2026-11 --private keys/2026-11.pem --jwks keys/jwks.json
    python -m devkit.tokens mint --private keys/2026-11.pem --kid 2026-11 --sub catalog-svc \\
        --roles write,search --owners shop-17 --ttl 3600
    python -m devkit.tokens retire --kid 2026-05 --jwks keys/jwks.json
    python -m devkit.tokens selfsigned --cert tls/gateway.pem --key tls/gateway.key   # tests / staging only
    python -m devkit.tokens client-cert --ca tls/gateway.pem --ca-key tls/gateway.key --name prometheus \
        --cert tls/prometheus.pem --key tls/prometheus.key                          # scrapes /metrics (mTLS)

Signing keys are Ed25519 (JWT alg EdDSA). The gateway holds only the public halves (the JWKS file); the private
key stays with whoever issues tokens. See docs/OPERATIONS.md for issuing and rotating.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from server.core.ids import owner_id_problem

AUDIENCE = "visual-search"


def keygen(kid: str, private_path: Path, jwks_path: Path) -> None:
    """A new Ed25519 key: private PEM (mode 0600) and its public half added to the JWKS file."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    keys = [k for k in _read_jwks(jwks_path) if k.get("kid") != kid]
    _write_jwks(jwks_path, [*keys, {**public, "kid": kid, "alg": "EdDSA", "use": "sig"}])


def retire(kid: str, jwks_path: Path) -> None:
    _write_jwks(jwks_path, [k for k in _read_jwks(jwks_path) if k.get("kid") != kid])


def _read_jwks(path: Path) -> list[dict]:
    return json.loads(path.read_text())["keys"] if path.exists() else []


def _write_jwks(path: Path, keys: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
    tmp.replace(path)  # the gateway re-reads the file when it changes: never let it see half a file


def mint(private_pem: bytes, kid: str, subject: str, roles: list[str], owners: list[str] = (),
         ttl_s: float = 3600, audience: str | None = AUDIENCE, issuer: str | None = None,
         now: float | None = None) -> str:
    for owner in owners:
        if (problem := owner_id_problem(owner)) is not None:
            raise ValueError(f"owner {owner!r} {problem}")
    now = time.time() if now is None else now
    claims = {"sub": subject, "roles": list(roles), "owners": list(owners), "iat": int(now), "exp": int(now + ttl_s)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    key = serialization.load_pem_private_key(private_pem, password=None)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def _write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> None:
    """The certificate (PEM) and its private key (PEM, mode 0600)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def selfsigned(cert_path: Path, key_path: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
    """A self-signed server certificate for loopback (tests, staging); production uses the company CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write_pair(cert, key, cert_path, key_path)


def client_cert(ca_cert_path: Path, ca_key_path: Path, name: str, cert_path: Path, key_path: Path,
                days: int = 30) -> None:
    """A client certificate `name` signed by a CA (e.g. `selfsigned`'s): what Prometheus presents to scrape a
    production gateway's /metrics (mutual TLS)."""
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_pair(cert, key, cert_path, key_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keygen")
    p.add_argument("--kid", required=True)
    p.add_argument("--private", type=Path, required=True)
    p.add_argument("--jwks", type=Path, required=True)
    p = sub.add_parser("retire")
    p.add_argument("--kid", required=True)
    p.add_argument("--jwks", type=Path, required=True)
    p = sub.add_parser("mint")
    p.add_argument("--private", type=Path, required=True)
    p.add_argument("--kid", required=True)
    p.add_argument("--sub", required=True)
    p.add_argument("--roles", required=True, help="comma-separated: search, write, admin")
    p.add_argument("--owners", default="", help="comma-separated owner IDs a write token may change")
    p.add_argument("--ttl", type=float, default=3600)
    p.add_argument("--issuer", default=None)
    p = sub.add_parser("selfsigned")
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p = sub.add_parser("client-cert")
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--ca-key", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        keygen(args.kid, args.private, args.jwks)
    elif args.command == "retire":
        retire(args.kid, args.jwks)
    elif args.command == "mint":
        split = [x for x in args.roles.split(",") if x], [x for x in args.owners.split(",") if x]
        print(mint(args.private.read_bytes(), args.kid, args.sub, split[0], split[1], args.ttl, issuer=args.issuer))
    elif args.command == "client-cert":
        client_cert(args.ca, args.ca_key, args.name, args.cert, args.key)
    else:
        selfsigned(args.cert, args.key)


if __name__ == "__main__":
    main()
