"""Development TLS: a local certificate authority and the certificates it signs.

Created on first use in NEARBY_HOME/tls (like the dev signing key, see
stack/tokens.py): `ca.pem` (give it to clients: `grpcurl -cacert`, the SDK's
`credentials=`), `server.pem`/`server-key.pem` (Envoy's TLS listener; names:
localhost, 127.0.0.1, ::1 and this host's name) and `mesh.pem`/`mesh-key.pem`
(optional mTLS between Envoy and the backends: one certificate for server and
client roles). Private keys are mode 0600. Production points TLS_CERT_PATH /
TLS_KEY_PATH (and MESH_TLS_*) at real files; nothing here is used then.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stack.tokens import write_atomic

DIR = "tls"
VALID_DAYS = 825  # the longest lifetime clients accept for a server certificate


@dataclass(frozen=True)
class DevTls:
    ca: Path
    server_cert: Path
    server_key: Path
    mesh_cert: Path
    mesh_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nearby development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _hosts() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    with contextlib.suppress(OSError):
        host = socket.gethostname()
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    return names


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    cn: str,
    usages: list[x509.ObjectIdentifier],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_hosts()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def load_or_create(home: Path) -> DevTls:
    """The dev CA and certificates in `home`/tls, created when missing."""
    d = home / DIR
    d.mkdir(parents=True, exist_ok=True)
    tls = DevTls(
        d / "ca.pem", d / "server.pem", d / "server-key.pem", d / "mesh.pem", d / "mesh-key.pem"
    )
    if all(p.exists() for p in (tls.ca, tls.server_cert, tls.server_key, tls.mesh_cert)) and (
        tls.mesh_key.exists()
    ):
        return tls
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("nearby development CA")
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server = _issue(ca_key, ca_name, "localhost", [ExtendedKeyUsageOID.SERVER_AUTH])
    mesh_key, mesh = _issue(
        ca_key,
        ca_name,
        "nearby mesh",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    pem = serialization.Encoding.PEM
    # keys first: a half-written set is recreated whole on the next start
    write_atomic(tls.server_key, _key_pem(server_key), 0o600)
    write_atomic(tls.mesh_key, _key_pem(mesh_key), 0o600)
    write_atomic(tls.server_cert, server.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    write_atomic(tls.mesh_cert, mesh.public_bytes(pem), 0o644)
    write_atomic(tls.ca, ca.public_bytes(pem), 0o644)  # last: marks the set complete
    # the CA's key is not kept: nothing else is ever signed with it
    return tls
