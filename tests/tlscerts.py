"""Certificates for TLS tests, made with ``cryptography``: a CA, and server certificates it
signs, with or without a subjectAltName."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path  # the CA certificate: what a client trusts

    def server_context(self, folder: Path, host: str, *, san: bool = True) -> ssl.SSLContext:
        """A server context with a certificate for ``host`` signed by this CA; ``san=False``
        names the host only in the subject's CN (no subjectAltName)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), key)
        builder = builder.issuer_name(self.cert.subject)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general(host)]), False)
        cert = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True).sign(
            self.key, hashes.SHA256()
        )
        stem = folder / f"{host}-{'san' if san else 'cn'}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(PEM))
        key_path.write_bytes(_private_pem(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pem))


def new_authority(folder: Path) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-reimage test CA")])
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    cert = (
        _base(name, key)
        .issuer_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(usage, True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = folder / "ca.pem"
    pem.write_bytes(cert.public_bytes(PEM))
    return Authority(key, cert, pem)


def _base(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


def _general(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
