"""QEMU settings as data: one record per machine flavour, turned into argv in one place.

Measured facts behind the defaults (environment.md §3, §6, §8): KVM is present but
unusable on the build machines, so TCG; ``-no-reboot`` plus ``panic=-1`` on the kernel
command line makes every reboot and every panic end QEMU; the serial console is the
evidence, so ``-nographic`` and ``console=ttyS0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class QemuParams:
    name: str
    binary: str = "qemu-system-x86_64"
    accel: str = "tcg"
    machine: str | None = None
    cpu: str | None = None
    memory_mib: int = 1024
    smp: int = 1
    devices: tuple[str, ...] = ()
    nic: str = "none"  # no NIC: nothing needs one, and SeaBIOS then skips the iPXE ROM
    # The host's command line; the spawn's comes from the bundle.  loglevel=6 keeps
    # the notices we match (banner, "Starting new kernel") and drops info chatter.
    # PYTHONHASHSEED reaches /init as an environment variable: without it the loader's
    # interpreter reads /dev/urandom before the entropy pool is ready, and the kernel
    # then spends seconds (under TCG) generating jitter entropy.
    append: tuple[str, ...] = ("console=ttyS0", "panic=-1", "loglevel=6", "PYTHONHASHSEED=0")

    def argv(self, kernel: Path, initrd: Path, extra_append: tuple[str, ...] = ()) -> list[str]:
        argv = [self.binary, "-accel", self.accel, "-nographic", "-monitor", "none", "-no-reboot",
                "-m", str(self.memory_mib), "-smp", str(self.smp), "-nic", self.nic]
        if self.machine:
            argv += ["-machine", self.machine]
        if self.cpu:
            argv += ["-cpu", self.cpu]
        for device in self.devices:
            argv += ["-device", device]
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(self.append + extra_append)]
        return argv


# A kexec check: one CPU boots fastest under TCG and kexec needs no more.
X86_64_KEXEC = QemuParams(name="x86_64-kexec")

# What known multikernel x86 setups use (multikernel-abi.md §11.2): q35, an interrupt-
# remapping IOMMU, spare CPUs for instances.  Smaller than theirs: on a stock host the
# check ends at the first step, and a real multikernel host needs a larger -m anyway.
X86_64_MULTIKERNEL = QemuParams(
    name="x86_64-multikernel",
    machine="q35",
    cpu="max",
    memory_mib=2048,
    smp=2,
    devices=("intel-iommu,intremap=on",),
    append=("console=ttyS0", "panic=-1", "loglevel=6", "PYTHONHASHSEED=0", "intel_iommu=on"),
)
