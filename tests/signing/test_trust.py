"""The trust store: PEM public keys and X.509 certificates (trusted for their key only)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mkimage.errors import InputError
from mkimage.signing.keys import PassphraseSource, key_id, load_private_key
from mkimage.signing.trust import load_trust_store

KEYS = Path(__file__).parents[1] / "data" / "keys"


def test_a_certificate_is_trusted_for_its_public_key(tmp_path: Path) -> None:
    key = load_private_key(KEYS / "test-ed25519.pem", PassphraseSource(None, "UNSET"), {})
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mkspawn trust test")])
    # Expired long ago: the store checks no validity window, only the key.
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)).sign(key, None))
    (tmp_path / "signer.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "other.pub.pem").write_bytes((KEYS / "other-ed25519.pub.pem").read_bytes())

    store = load_trust_store(tmp_path, must_exist=True)

    kid = key_id(key.public_key())
    assert set(store.keys) == {kid, key_id(load_private_key(KEYS / "other-ed25519.pem", PassphraseSource(None, "UNSET"),
                                                            {}).public_key())}
    assert store.keys[kid].source == tmp_path / "signer.crt"


def test_a_damaged_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(InputError) as e:
        load_trust_store(tmp_path, must_exist=True)
    assert e.value.code == "bad-trust-store" and "bad.crt" in e.value.message
