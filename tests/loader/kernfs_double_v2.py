"""A STAND-IN for a v2 multikernel host (the RFC v2 series; no such kernel can boot where
the tests run), for the system loader's v2 path.  What it models is what
multikernel-abi.md says of v2: one DTB written to ``device_tree`` creates every
``/instances/<name>`` (§7.1: ``id`` and ``resources { cpus; memory-bytes; }``, u32
cells), there are no overlays (§2), a load leaves the instance ``loading`` (§6), and the
load's errnos are §4.2's (no such instance ENOENT, already loaded EBUSY).  Everything
else is the current-generation stand-in's (tests/loader/kernfs_double.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from mkimage.devicetree.fdt import FdtNode, decode_fdt
from mkimage.errors import FormatError
from mkimage.loader import multikernel, syscalls
from tests.loader.kernfs_double import Instance, MultikernelHostDouble, _fail, _u32

V2_COMPATIBLE = b"multikernel-v1\0"


@dataclass
class V2HostDouble(MultikernelHostDouble):
    def listdir(self, rel: str) -> list[str]:
        if rel == "overlays":  # v2 has no overlays directory
            raise _fail(errno.ENOENT)
        return super().listdir(rel)

    def write(self, rel: str, data: bytes) -> int:
        self.calls.append(f"write {rel} {len(data)}")
        if rel != "device_tree":
            raise _fail(errno.ENOENT)
        try:
            root = decode_fdt(data).root
        except FormatError:
            raise _fail(errno.EINVAL) from None
        if root.prop("compatible") != V2_COMPATIBLE:
            raise _fail(errno.EINVAL)
        if self.baseline is not None:
            raise _fail(errno.EBUSY)
        instances = root.find("/instances")
        created = {child.name: self._instance(child) for child in (instances.children if instances else ())}
        self.instances.update(created)
        self.baseline = data
        return len(data)

    @staticmethod
    def _instance(node: FdtNode) -> Instance:
        mk_id = _u32(node, "id")
        resources = node.child("resources")
        if mk_id is None or not mk_id or resources is None:
            raise _fail(errno.EINVAL)
        cpus, memory = resources.prop("cpus"), resources.prop("memory-bytes")
        if not cpus or len(cpus) % 4 or memory is None or len(memory) != 4:  # u32 cells in v2
            raise _fail(errno.EINVAL)
        return Instance(mk_id)

    def kexec_file_load(self, kernel: str | None, initrd: str | None, cmdline: str | None, flags: int) -> None:
        self.calls.append(f"kexec_file_load {flags:#x}")
        inst = self._by_id((flags & multikernel.KEXEC_MK_ID_MASK) >> multikernel.KEXEC_MK_ID_SHIFT)
        if flags & syscalls.KEXEC_FILE_UNLOAD:
            inst.status = "ready"
            return
        if inst.status != "ready":
            raise _fail(errno.EBUSY)
        inst.status = "loading"

    def reboot(self, cmd: int, mk_id: int) -> None:
        self.calls.append(f"reboot {cmd:#x} {mk_id}")
        inst = self._by_id(mk_id)
        if cmd != multikernel.LINUX_REBOOT_CMD_MULTIKERNEL or inst.status != "loading":
            raise _fail(errno.EBUSY)
        inst.status = "active"
