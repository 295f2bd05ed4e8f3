"""Test-only X.509 material for kexec signature checks, generated on first use.

Made with ``cryptography`` and cached under the test-asset cache (never committed) so
the signature-enforcing host kernel, which compiles the CA in, keeps one cache key
across runs.  What the kernel checks (environment.md §10): the signing certificate must
chain to a built-in key through its Authority Key Identifier, and the signing time must
fall inside its validity window; so both are set with care here.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

VALID_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
VALID_UNTIL = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)
VERSION = "v1"  # bump to regenerate (and rebuild the host that trusts it)


@dataclass(frozen=True, slots=True)
class SigningPair:
    key: Path
    cert: Path


@dataclass(frozen=True, slots=True)
class KexecCA:
    ca_cert: Path  # what the host compiles in (CONFIG_SYSTEM_TRUSTED_KEYS)
    trusted: SigningPair  # issued by the CA, with AKID
    other: SigningPair  # a self-signed key the host does not trust


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mkspawn tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, *, ca: bool,
          serial: int) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(VALID_FROM).not_valid_after(VALID_UNTIL)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Without an AKID the kernel cannot find the issuer: ENOKEY, though sbverify is happy.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def kexec_ca(cache_dir: Path) -> KexecCA:
    root = cache_dir / f"kexec-sig-ca-{VERSION}"
    result = KexecCA(root / "ca.crt", SigningPair(root / "signer.key", root / "signer.crt"),
                     SigningPair(root / "other.key", root / "other.crt"))
    if root.is_dir():
        return result
    tmp = root.with_name(f".{root.name}.{os.getpid()}")
    tmp.mkdir(parents=True)
    ca_key, signer_key, other_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
    ca = _cert("mkspawn test kexec CA", ca_key, "mkspawn test kexec CA", ca_key, ca=True, serial=1)
    signer = _cert("mkspawn test kernel signer", signer_key, "mkspawn test kexec CA", ca_key, ca=False, serial=2)
    other = _cert("untrusted signer", other_key, "untrusted signer", other_key, ca=True, serial=3)
    pem = serialization.Encoding.PEM
    _write(tmp / "ca.crt", ca.public_bytes(pem))
    _write(tmp / "signer.crt", signer.public_bytes(pem))
    _write(tmp / "signer.key", _key_pem(signer_key), 0o600)
    _write(tmp / "other.crt", other.public_bytes(pem))
    _write(tmp / "other.key", _key_pem(other_key), 0o600)
    try:
        os.replace(tmp, root)
    except OSError:  # a concurrent run made it first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return result
