"""The trust store: a directory of PEM public keys or X.509 certificates.

Every ``*.pem``/``*.crt`` file in the directory is one trusted key.  A certificate is
trusted for its public key only (no chain building, no expiry): the store is the
operator's explicit list, like an ssh authorized_keys file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mkimage.errors import InputError
from mkimage.signing.keys import PublicKey, key_id

TRUST_SUFFIXES = (".pem", ".crt", ".pub")


def default_trust_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "/root"), ".config")
    return Path(base) / "mkspawn" / "trust"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    keyid: str
    key: PublicKey
    source: Path


@dataclass(frozen=True, slots=True)
class TrustStore:
    directory: Path | None
    keys: Mapping[str, TrustedKey] = field(default_factory=dict)

    def get(self, keyid: str) -> TrustedKey | None:
        return self.keys.get(keyid)


def load_public_key_file(path: Path) -> PublicKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read trusted key: {e.strerror}", code="bad-trust-store") from None
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            # Only here: cryptography.x509 costs ~15 ms to import, and most stores hold keys.
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not a PEM public key or certificate", code="bad-trust-store") from None
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise InputError(f"{path}: unsupported key type in trust store", code="bad-trust-store")
    return key


def load_trust_store(directory: Path, *, must_exist: bool) -> TrustStore:
    if not directory.is_dir():
        if must_exist:
            raise InputError(f"{directory}: trust store directory does not exist", code="bad-trust-store")
        return TrustStore(directory)
    keys: dict[str, TrustedKey] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in TRUST_SUFFIXES or not path.is_file():
            continue
        key = load_public_key_file(path)
        kid = key_id(key)
        keys.setdefault(kid, TrustedKey(kid, key, path))
    return TrustStore(directory, keys)
