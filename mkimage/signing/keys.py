"""Signing keys: generation, PEM storage, key ids, and signatures over bytes.

Schemes are fixed per key type so a verifier never negotiates: Ed25519, ECDSA
P-256/SHA-256, ECDSA P-384/SHA-384 and RSA-3072 PSS/SHA-256.  A key id is the
SHA-256 of the public key's SubjectPublicKeyInfo DER, as in TUF.

Private key material never appears in messages: errors name the file only.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from mkimage.errors import InputError, UsageError
from mkimage.outputs import write_atomic

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_BITS = 3072
PASSPHRASE_ENV = "MKSPAWN_KEY_PASSPHRASE"


class Algorithm(enum.StrEnum):
    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA3072 = "rsa3072"


class Scheme(enum.StrEnum):
    """The signature scheme recorded beside each signature."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    ECDSA_P384_SHA384 = "ecdsa-p384-sha384"
    RSA_PSS_SHA256 = "rsa-pss-sha256"


def generate_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm is Algorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm is Algorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is Algorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def private_key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_key_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def scheme_for(key: PublicKey | PrivateKey) -> Scheme:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return Scheme.ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return Scheme.ECDSA_P256_SHA256
        if isinstance(key.curve, ec.SECP384R1):
            return Scheme.ECDSA_P384_SHA384
        raise UsageError(f"unsupported EC curve {key.curve.name}; use P-256 or P-384", code="bad-key")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < 2048:
            raise UsageError(f"RSA key of {key.key_size} bits is too small", code="bad-key")
        return Scheme.RSA_PSS_SHA256
    raise UsageError(f"unsupported key type {type(key).__name__}", code="bad-key")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign_bytes(key: PrivateKey, data: bytes) -> tuple[Scheme, bytes]:
    scheme = scheme_for(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return scheme, key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA256() if scheme is Scheme.ECDSA_P256_SHA256 else hashes.SHA384()
        return scheme, key.sign(data, ec.ECDSA(digest))
    return scheme, key.sign(data, _pss(), hashes.SHA256())


def verify_bytes(key: PublicKey, scheme: str, data: bytes, signature: bytes) -> bool:
    """True only if ``signature`` is valid for ``data`` under ``key`` *and* ``scheme``
    is the one scheme that key type uses."""
    try:
        if scheme_for(key).value != scheme:
            return False
    except UsageError:
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            digest = hashes.SHA256() if scheme == Scheme.ECDSA_P256_SHA256 else hashes.SHA384()
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            key.verify(signature, data, _pss(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


# ---- passphrases and key files -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class PassphraseSource:
    """Where a passphrase comes from; never argv."""

    file: Path | None = None
    env_var: str = PASSPHRASE_ENV

    def read(self, env: Mapping[str, str]) -> bytes | None:
        if self.file is not None:
            try:
                text = self.file.read_bytes()
            except OSError as e:
                raise InputError(f"{self.file}: cannot read passphrase file: {e.strerror}") from None
            return text.splitlines()[0] if text.strip() else None
        value = env.get(self.env_var)
        return value.encode() if value else None


def load_private_key(path: Path, source: PassphraseSource, env: Mapping[str, str]) -> PrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read private key: {e.strerror}", code="bad-key") from None
    passphrase = source.read(env)
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        if passphrase is None:
            raise InputError(
                f"{path}: private key is encrypted; give --passphrase-file or set ${source.env_var}",
                code="bad-key",
            ) from None
        raise InputError(f"{path}: private key is not encrypted but a passphrase was given", code="bad-key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not a PEM private key, or wrong passphrase", code="bad-key") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InputError(f"{path}: unsupported private key type", code="bad-key")
    scheme_for(key)
    return key


def save_keypair(private_path: Path, key: PrivateKey, passphrase: bytes | None) -> Path:
    """Write ``private_path`` (0600) and ``<stem>.pub.pem`` beside it; returns the public path."""
    public_path = private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")
    write_atomic(private_path, private_key_pem(key, passphrase), mode=0o600)
    write_atomic(public_path, public_key_pem(key.public_key()), mode=0o644)
    return public_path
