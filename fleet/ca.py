"""The fleet CA: device client certificates, the broker's server certificate, the CRL.

The CA key (ECDSA P-256, mbedTLS-friendly) is held by the control plane in
``FLEET_KEYS_DIR``; in the embedded default it is generated on first use.
"""

import contextlib
import datetime as dt
import fcntl
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from device_agent.protocol import fsutil

CA_KEY_FILE = "fleet-ca.key"
CA_CERT_FILE = "fleet-ca.pem"
# Not a valid device id (ids have no dots), so no device can enroll as the bridge.
BRIDGE_IDENTITY = "bridge.fleet"
MAX_CSR_BYTES = 16 * 1024


class CsrError(ValueError):
    """The CSR cannot be used: unparsable, badly signed, or a weak key."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: str
    not_after: dt.datetime


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def _creating(keys: Path) -> Iterator[None]:
    """Held while the CA is created: processes starting together (a fresh embedded start)
    create it one at a time, and the others then find it made."""
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (keys / ".fleet-ca.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ca_load_or_create() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    keys = Path(settings.FLEET_KEYS_DIR)
    key_path, cert_path = keys / CA_KEY_FILE, keys / CA_CERT_FILE
    if not key_path.exists():
        with _creating(keys):
            if not key_path.exists():
                _create(key_path, cert_path)
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{key_path} is not an EC key")
    return loaded, x509.load_pem_x509_certificate(cert_path.read_bytes())


def _create(key_path: Path, cert_path: Path) -> None:
    """A new CA: the certificate first, then the key, each written atomically; the key's
    presence is what says the CA exists."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleet OTA device CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(key_path, _private_pem(key), mode=0o600)


def ca_certificate_pem() -> bytes:
    return ca_load_or_create()[1].public_bytes(serialization.Encoding.PEM)


def _issue(
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    days: int,
    server_names: list[str] | None = None,
) -> IssuedCertificate:
    ca_key, ca_cert = ca_load_or_create()
    serial = x509.random_serial_number()
    not_after = _now() + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.SERVER_AUTH
                    if server_names
                    else ExtendedKeyUsageOID.CLIENT_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server_names:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(
        cert.public_bytes(serialization.Encoding.PEM), format(serial, "x"), not_after
    )


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The CSR's public key after checking its self-signature and key strength."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in {"secp256r1", "secp384r1"}:
            raise CsrError(f"EC curve {key.curve.name} is not accepted: use P-256")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CsrError("RSA keys must have at least 2048 bits")
        return key
    raise CsrError("the key must be EC P-256/P-384 or RSA >= 2048")


def device_certificate_issue(csr_pem: bytes, device_id: str) -> IssuedCertificate:
    """A client certificate whose CN is the device id (whatever the CSR asked for)."""
    return _issue(device_id, csr_public_key(csr_pem), days=settings.FLEET_DEVICE_CERT_DAYS)


def client_keypair_issue(common_name: str, days: int = 3650) -> tuple[bytes, IssuedCertificate]:
    """A key pair and client certificate made here (for the bridge's own identity)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, _issue(common_name, key.public_key(), days=days)


def server_keypair_issue(names: list[str], days: int = 825) -> tuple[bytes, IssuedCertificate]:
    """A key pair and TLS server certificate (the broker's), SANs for every name given."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, _issue(names[0], key.public_key(), days=days, server_names=names)


def crl_build(revoked: list[tuple[str, dt.datetime]]) -> bytes:
    """A CRL (PEM) listing the given (hex serial, revocation time) pairs."""
    ca_key, ca_cert = ca_load_or_create()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_now() - dt.timedelta(minutes=5))
        .next_update(_now() + dt.timedelta(days=30))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(when)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync the directory: readers see old or new, never half.
    Several processes may write the same file (the CRL), each with its own temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(path, data, mode=mode, shared=True)
