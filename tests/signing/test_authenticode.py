"""Authenticode signing of kernel images with sbsign, on a real PE kernel (Debian's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import InputError
from mkimage.signing.authenticode import is_pe, sign_image, signatures, verify_image
from tests.conftest import needs_tool
from tests.signing.kexec_ca import KexecCA, kexec_ca


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> KexecCA:
    return kexec_ca(tmp_path_factory.mktemp("ca"))


def test_pe_detection(debian_kernel_bytes: bytes, synthetic_bzimage: bytes) -> None:
    assert is_pe(debian_kernel_bytes[:4096])
    assert not is_pe(synthetic_bzimage[:4096])  # a bzImage without EFI stub
    assert not is_pe(b"MZ")


def test_sign_verify_and_list(tmp_path: Path, debian_kernel: Path, ca: KexecCA) -> None:
    needs_tool("sbsign", "sbverify")
    assert signatures(debian_kernel) == []
    signed = sign_image(debian_kernel, ca.trusted.key, ca.trusted.cert, tmp_path / "vmlinuz.signed")
    assert signatures(signed) == ["/O=mkspawn tests/CN=mkspawn test kernel signer"]
    assert verify_image(signed, ca.ca_cert)
    assert not verify_image(signed, ca.other.cert)
    assert signed.stat().st_size > debian_kernel.stat().st_size
    with pytest.raises(InputError, match="already carries"):
        sign_image(signed, ca.trusted.key, ca.trusted.cert, tmp_path / "twice")


def test_an_image_without_efi_stub_is_refused_with_a_hint(tmp_path: Path, synthetic_kernel: Path,
                                                           ca: KexecCA) -> None:
    with pytest.raises(InputError) as e:
        sign_image(synthetic_kernel, ca.trusted.key, ca.trusted.cert, tmp_path / "out")
    assert e.value.code == "not-pe" and e.value.hint and "CONFIG_EFI_STUB" in e.value.hint
    assert not (tmp_path / "out").exists()
