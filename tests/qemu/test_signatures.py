"""Signature mode: a host built with kexec-sig.config (KEXEC_SIG_FORCE) that trusts a test
CA decides, in QEMU, on an EFI-stub spawn signed four ways.  The kernel's own verdicts
(environment.md §10): signed by a CA-issued cert → loaded and booted; unsigned →
ENODATA; tampered after signing → EKEYREJECTED; signed by an untrusted key → ENOKEY.

Costs two kernel builds on a cold cache (the host compiles the CA in; the CA is made
once and cached with the test assets so the host's cache key stays put)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkimage.kernel.build import build_kernel
from mkimage.qemu.check import CheckOptions, HostKernel, check_payload, resolve_host_kernel
from mkimage.qemu.console import Outcome
from mkimage.qemu.hostfs import SpawnPayload
from mkimage.recipe.load import load_recipe
from mkimage.signing.authenticode import sign_image
from tests.conftest import needs_tool, without_progress
from tests.conftest import run_mkspawn as mkspawn
from tests.qemu.conftest import REPO, cache_root, make_bundle
from tests.signing.kexec_ca import KexecCA, kexec_ca

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca() -> KexecCA:
    return kexec_ca(cache_root() / "test-assets")


def host_set(ca: KexecCA) -> str:
    return f'kernel.trusted_keys="{ca.ca_cert}"'


@pytest.fixture(scope="module")
def sig_host(qemu: None, ca: KexecCA) -> HostKernel:
    return resolve_host_kernel(None, REPO / "recipes" / "sig-host.toml", cache_root=cache_root(),
                               overrides=[host_set(ca)])


@pytest.fixture(scope="module")
def efi_spawn(qemu: None) -> Path:
    recipe = load_recipe(REPO / "recipes" / "sig-spawn.toml")
    return build_kernel(recipe.kernel, arch="x86_64", cache_root=cache_root(), source_date_epoch=0).image


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, efi_spawn: Path, ca: KexecCA) -> dict[str, Path]:
    needs_tool("sbsign", "sbverify")
    d = tmp_path_factory.mktemp("variants")
    signed = sign_image(efi_spawn, ca.trusted.key, ca.trusted.cert, d / "signed")
    tampered = bytearray(signed.read_bytes())
    tampered[len(tampered) // 2] ^= 0x01  # inside the compressed payload, which the digest covers
    (d / "tampered").write_bytes(tampered)
    return {"signed": signed, "unsigned": efi_spawn, "tampered": d / "tampered",
            "other-key": sign_image(efi_spawn, ca.other.key, ca.other.cert, d / "other")}


def test_only_the_signed_image_is_accepted_each_refusal_with_its_errno(
        sig_host: HostKernel, variants: dict[str, Path], spawn_initrd: Path, no_stray_qemu: Path) -> None:
    rejected = ("unsigned", "tampered", "other-key")
    result = check_payload(SpawnPayload(variants["signed"], spawn_initrd, "console=ttyS0 panic=-1"), sig_host,
                           CheckOptions(timeout_s=60, log_dir=no_stray_qemu,
                                        probes=tuple(variants[v] for v in rejected)),
                           cache_root=cache_root())
    assert result.outcome is Outcome.PASSED, result.console_tail
    assert result.nonce_seen
    verdicts = {name: (p.accepted, p.errno) for name, p in zip(rejected, result.probes, strict=True)}
    assert verdicts == {"unsigned": (False, "ENODATA"), "tampered": (False, "EKEYREJECTED"),
                        "other-key": (False, "ENOKEY")}
    log = (no_stray_qemu / "console.log").read_text()
    assert "Enforced kernel signature verification failed" in log


def test_check_cli_passes_a_signed_bundle_and_fails_an_unsigned_one(
        tmp_path: Path, sig_host: HostKernel, ca: KexecCA, efi_spawn: Path, variants: dict[str, Path],
        spawn_initrd: Path, trust_dir: Path, no_stray_qemu: Path) -> None:
    def check(kernel: Path, name: str) -> subprocess.CompletedProcess[str]:
        bundle = make_bundle(tmp_path / name, kernel, spawn_initrd)
        return mkspawn("check", bundle, "--host-recipe", REPO / "recipes" / "sig-host.toml",
                       "--host-set", host_set(ca), "--trust", trust_dir, "--timeout", "60",
                       "--log-dir", no_stray_qemu / name)

    done = check(variants["signed"], "signed")
    assert done.returncode == 0, done.stdout + done.stderr
    done = check(efi_spawn, "unsigned")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "ENODATA (61), signature: signature failure" in done.stdout
    assert "reached loader" in done.stdout and "last " in done.stdout
    (line,) = without_progress(done.stderr)
    assert "returned ENODATA (61): signature failure" in line and "stage loader" in line
