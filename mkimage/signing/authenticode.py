"""Authenticode signatures on the spawn's kernel image, through sbsigntool.

A host built with KEXEC_SIG_FORCE and KEXEC_BZIMAGE_VERIFY_SIG accepts only a bzImage
carrying a PE Authenticode signature that chains to its built-in trusted keys
(kexec-and-formats.md §5.3, environment.md §10).  Facts that shape this module:

* only a PE file can be signed: the kernel needs CONFIG_EFI_STUB, else sbsign refuses
  and the host says ELIBBAD — checked here first, with that hint;
* the kernel verifies the exact bytes it is given, so sign the final image and ship
  that very file (no recompression or repacking afterwards);
* ``sbverify`` does not predict the kernel's verdict (a certificate without an Authority
  Key Identifier verifies with sbverify and is refused by the kernel with ENOKEY):
  only the boot check decides; ``verify_image`` is a sanity check.

The bundle builder calls ``sign_image`` when the recipe sets ``[bundle] kernel_signing``.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

from mkimage.errors import InputError, ToolError
from mkimage.outputs import atomic_output
from mkimage.run import run

SBSIGN_TIMEOUT_S = 120
DOS_MAGIC = b"MZ"
PE_MAGIC = b"PE\0\0"
PE_OFFSET_FIELD = 0x3C  # e_lfanew in the DOS header


def is_pe(head: bytes) -> bool:
    """True when ``head`` (the first KiB or so of a file) starts a PE image."""
    if len(head) < PE_OFFSET_FIELD + 4 or not head.startswith(DOS_MAGIC):
        return False
    (pe_offset,) = struct.unpack_from("<I", head, PE_OFFSET_FIELD)
    return head[pe_offset:pe_offset + 4] == PE_MAGIC


def _require_pe(image: Path) -> None:
    try:
        with image.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise InputError(f"{image}: cannot read kernel image: {e.strerror}", code="no-such-file") from None
    if not is_pe(head):
        raise InputError(f"{image}: not a PE image, so it cannot carry an Authenticode signature",
                         code="not-pe", hint="build the kernel with CONFIG_EFI_STUB=y (x86 EFI also needs ACPI)")


def sign_image(image: Path, key: Path, cert: Path, out: Path) -> Path:
    """Write ``image`` signed with ``key``/``cert`` to ``out`` (atomically); returns ``out``.

    The signature replaces none already present: sbsign appends to the certificate
    table, and the kernel checks only the first entry, so an already signed image is
    refused rather than silently double-signed.
    """
    _require_pe(image)
    if signatures(image):
        raise InputError(f"{image}: already carries an Authenticode signature; the kernel checks only the "
                         "first, so sign an unsigned image", code="already-signed")
    with tempfile.TemporaryDirectory(prefix="mkspawn-sbsign-") as tmp:
        signed = Path(tmp) / image.name
        run(["sbsign", "--key", key, "--cert", cert, "--output", signed, image], stage="signing",
            timeout_s=SBSIGN_TIMEOUT_S)
        with atomic_output(out) as f, signed.open("rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    return out


def signatures(image: Path) -> list[str]:
    """Signer subjects, as ``sbverify --list`` prints them (empty: unsigned)."""
    done = run(["sbverify", "--list", image], stage="signing", timeout_s=SBSIGN_TIMEOUT_S, check=False)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    if "No signature table present" in text:
        return []
    if done.returncode != 0:
        raise ToolError(f"signing: sbverify cannot read {image}: {text.strip().splitlines()[-1] if text else ''}",
                        argv=["sbverify", "--list", str(image)], returncode=done.returncode, stderr_tail=text)
    return [line.split("subject:", 1)[1].strip() for line in text.splitlines() if "subject:" in line]


def verify_image(image: Path, cert: Path) -> bool:
    """``sbverify --cert``: a sanity check only; the host kernel's verdict is what counts."""
    done = run(["sbverify", "--cert", cert, image], stage="signing", timeout_s=SBSIGN_TIMEOUT_S, check=False)
    return done.returncode == 0
