"""What an errno from kexec_file_load(2) or reboot(2) means for a spawn image.

Sources: kexec-and-formats.md §4–§5 (kernel/kexec_file.c, verify_pefile.c) and the
verdicts measured under QEMU in environment.md §10.
"""

from __future__ import annotations

import errno
import os

# Kernel-internal, leaks to user space from the PE signature wrapper check; Python's
# errno module does not know it.
ENOTSUPP = 524

FORMAT = "format"
SIGNATURE = "signature"
FLAGS = "flags"
PERMISSION = "permission"
RESOURCE = "resource"
UNSUPPORTED = "unsupported"
OTHER = "other"

# errno number → (class, meaning in the context of loading a spawn kernel)
MEANINGS: dict[int, tuple[str, str]] = {
    errno.ENOEXEC: (FORMAT, "bad format: no kexec loader of this kernel accepts the image "
                            "(not a 64-bit relocatable bzImage, truncated, or no multikernel note)"),
    errno.EKEYREJECTED: (SIGNATURE, "signature failure: the signature does not match the image "
                                    "(tampered after signing, unsigned PE, or signed outside the "
                                    "certificate's validity)"),
    errno.EBADMSG: (SIGNATURE, "signature failure: malformed PKCS#7 signature or missing "
                               "authenticated attributes"),
    errno.ENOKEY: (SIGNATURE, "signature failure: the signer does not chain to a key the host "
                              "kernel trusts (or its certificate has no Authority Key Identifier)"),
    errno.ENODATA: (SIGNATURE, "signature failure: the image carries no signature and the host "
                               "enforces signatures"),
    errno.ELIBBAD: (SIGNATURE, "signature failure: not a PE image (kernel built without EFI_STUB) "
                               "or a malformed signature wrapper"),
    errno.ENOPKG: (SIGNATURE, "signature failure: hash or key algorithm unsupported by the host kernel"),
    errno.EMSGSIZE: (SIGNATURE, "signature failure: PKCS#7 blob with an unsupported length encoding"),
    ENOTSUPP: (SIGNATURE, "signature failure: wrong WIN_CERTIFICATE revision or type"),
    errno.EPERM: (PERMISSION, "not permitted: no CAP_SYS_BOOT, kexec_load_disabled, load limit "
                              "reached, or lockdown refused an image whose signature failed"),
    errno.EINVAL: (FLAGS, "bad flags or arguments: a flag this kernel does not know (e.g. "
                          "KEXEC_MULTIKERNEL on a stock kernel), a command line too long or not "
                          "NUL-terminated, or an empty file"),
    errno.EFBIG: (RESOURCE, "the image is larger than the kernel's read limit"),
    errno.EBUSY: (RESOURCE, "busy: the kexec lock is held, or the instance already has an image"),
    errno.EADDRNOTAVAIL: (RESOURCE, "no memory hole fits a segment"),
    errno.ENOMEM: (RESOURCE, "out of memory while staging the image"),
    errno.ENOSYS: (UNSUPPORTED, "the host kernel has no kexec_file_load (built without KEXEC_FILE)"),
    errno.ENODEV: (UNSUPPORTED, "no such filesystem or device in this kernel"),
    errno.ENOENT: (OTHER, "no such file, directory or multikernel instance"),
    errno.EOPNOTSUPP: (FORMAT, "protocol not supported: the image's multikernel note is of an "
                               "older generation than the host's"),
}


def errno_name(number: int) -> str:
    if number == ENOTSUPP:
        return "ENOTSUPP"
    return errno.errorcode.get(number, f"E{number}")


def describe(number: int) -> tuple[str, str]:
    """(class, meaning) of an errno; unknown ones get the C library's message."""
    if number in MEANINGS:
        return MEANINGS[number]
    return OTHER, os.strerror(number)


class LoaderError(Exception):
    """A syscall or kernel interface refused; ``op`` says which."""

    def __init__(self, op: str, number: int, detail: str = "") -> None:
        self.op = op
        self.errno = number
        self.name = errno_name(number)
        self.kind, self.meaning = describe(number)
        self.detail = detail
        super().__init__(self.line())

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.op}: {self.name} ({self.errno}): {self.meaning}{extra}"


class UnsupportedHost(Exception):
    """The running kernel lacks what a mode needs (e.g. multikernel support)."""
