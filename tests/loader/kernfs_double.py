"""A STAND-IN for a multikernel host kernel, for the loader tests: no multikernel kernel
can boot where the tests run.  It has LiveHost's methods (mkimage/loader/multikernel.py)
and reproduces only what the loader can observe, as read from multikernel/linux
(commits in docs/multikernel-conformance.md): kernel/multikernel/kernfs.c, overlay.c,
baseline.c and dts.c, plus mainline kernfs's write path.  Each behaviour names the
kernel function it mirrors.  Memory, CPU and device moves are not modelled: their
overlay operations raise NotImplementedError, so a test that reaches one fails loudly.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from mkimage.devicetree.fdt import FdtNode, decode_fdt
from mkimage.errors import FormatError
from mkimage.loader import multikernel, syscalls

PAGE_BYTES = 4096
ATOMIC_WRITE_LEN = 1 << 20  # kernfs.c mk_root_device_tree_ops.atomic_write_len = SZ_1M
STATES = ("empty", "ready", "loaded", "active", "failed")  # kernfs.c mk_state_strings


def _fail(number: int) -> OSError:
    return OSError(number, os.strerror(number))


def _u32(node: FdtNode, prop: str) -> int | None:
    value = node.prop(prop)
    return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None


def _text(node: FdtNode, prop: str) -> str | None:
    value = node.prop(prop)
    return value[:-1].decode() if value and value.endswith(b"\0") else None


@dataclass
class Instance:
    id: int
    status: str = "ready"  # kernfs.c mk_create_instance_from_dtb sets MK_STATE_READY


@dataclass
class Tx:
    id: int
    status: str
    target_path: str
    dtbo: bytes


@dataclass
class MultikernelHostDouble:
    root: str = "/sys/fs/multikernel"
    spawn_console: list[str] = field(default_factory=lambda: ["MKSPAWN-READY"])
    page_bytes: int = PAGE_BYTES
    instances: dict[str, Instance] = field(default_factory=dict)
    txs: dict[int, Tx] = field(default_factory=dict)
    baseline: bytes | None = None
    next_tx: int = 1  # overlay.c mk_overlay_next_id = ATOMIC_INIT(1), taken with atomic_inc_return
    consoles: dict[int, int] = field(default_factory=dict)  # mk_id -> write end of the console pipe
    calls: list[str] = field(default_factory=list)

    # ---- the filesystem --------------------------------------------------------------------

    def mounted(self) -> bool:
        return True

    def has_filesystem(self) -> bool:
        return True

    def mount(self) -> None:
        pass

    def listdir(self, rel: str) -> list[str]:
        if rel == "overlays":  # overlay.c mk_overlay_init, mk_overlay_apply: "new" and tx_%d
            return ["new", *(f"tx_{n}" for n in self.txs)]
        if rel == "instances":
            return list(self.instances)
        raise _fail(errno.ENOENT)

    def exists(self, rel: str) -> bool:
        try:
            self.read(rel)
        except OSError as e:
            return e.errno == errno.EISDIR
        return True

    def read(self, rel: str) -> bytes:
        parts = rel.split("/")
        if parts[0] == "instances" and len(parts) >= 2 and parts[1] in self.instances:
            inst = self.instances[parts[1]]
            if len(parts) == 2:
                raise _fail(errno.EISDIR)
            if parts[2:] == ["id"]:  # kernfs.c id_seq_show
                return f"{inst.id}\n".encode()
            if parts[2:] == ["status"]:  # kernfs.c status_seq_show
                return f"{inst.status}\n".encode()
        if parts[0] == "overlays" and len(parts) >= 2 and parts[1].startswith("tx_"):
            tx = self.txs.get(int(parts[1][3:]))
            if tx is not None:
                if len(parts) == 2:
                    raise _fail(errno.EISDIR)
                shown = {"id": f"{tx.id}\n",  # overlay.c tx_id_seq_show
                         "status": f"{tx.status}\n",  # tx_status_seq_show
                         # tx_instance_seq_show: the first fragment's target-path, not a name
                         "instance": f"{tx.target_path}\n",
                         "resources": "unknown\n"}  # tx_resources_seq_show, no mk,resources
                if parts[2:] == ["dtbo"]:  # tx_dtbo_read: the blob as written
                    return tx.dtbo
                if len(parts) == 3 and parts[2] in shown:
                    return shown[parts[2]].encode()
        raise _fail(errno.ENOENT)

    def write(self, rel: str, data: bytes) -> int:
        self.calls.append(f"write {rel} {len(data)}")
        if rel == "device_tree":
            if len(data) > ATOMIC_WRITE_LEN:  # mainline kernfs_fop_write_iter: -E2BIG past atomic_write_len
                raise _fail(errno.E2BIG)
            return self._write_baseline(data)
        if rel == "overlays/new":
            # mainline kernfs_fop_write_iter: without atomic_write_len one call carries at most a page
            return self._write_overlay(data[: self.page_bytes])
        raise _fail(errno.EACCES)

    def mkdir(self, rel: str) -> None:
        raise _fail(errno.EPERM)  # kernfs.c mk_kernfs_mkdir: instances come from overlays only

    def rmdir(self, rel: str) -> None:
        # overlay.c mk_overlay_rmdir: only transaction directories, everything else EPERM
        parts = rel.split("/")
        if len(parts) != 2 or parts[0] != "overlays" or not parts[1].startswith("tx_"):
            raise _fail(errno.EPERM)
        tx = self.txs.get(int(parts[1][3:]))
        if tx is None:
            raise _fail(errno.ENOENT)
        try:
            try:
                root = decode_fdt(tx.dtbo).root
            except FormatError:  # mk_overlay_collect_fragments finds nothing usable
                raise _fail(errno.EINVAL) from None
            self._walk(root, undo=True)
        except OSError:
            tx.status = "failed"  # a failed rollback leaves the transaction, status "failed"
            raise
        del self.txs[tx.id]

    # ---- the kernel's write handlers -----------------------------------------------------

    def _write_baseline(self, data: bytes) -> int:
        # baseline.c mk_baseline_validate_and_initialize: a pool already there is -EBUSY,
        # checked before anything else (kernfs.c root_device_tree_write checks the header first)
        try:
            fdt = decode_fdt(data)
        except FormatError:
            raise _fail(errno.EINVAL) from None
        if fdt.total_size != len(data):  # kernfs.c root_device_tree_write: totalsize == count
            raise _fail(errno.EINVAL)
        instances = fdt.root.find("/instances")
        if instances is not None and instances.children:  # root_device_tree_write: no instances
            raise _fail(errno.EINVAL)
        if self.baseline is not None:
            raise _fail(errno.EBUSY)
        if fdt.root.find("/resources") is None:
            raise _fail(errno.EINVAL)
        self.baseline = data  # the rules themselves are checked on our blobs in tests/devicetree
        return len(data)

    def _write_overlay(self, data: bytes) -> int:
        # overlay.c mk_overlay_new_write: fdt_check_header (the header alone; it cannot know
        # the buffer is shorter than totalsize), else -EINVAL and no transaction
        if len(data) < 40 or data[:4] != b"\xd0\x0d\xfe\xed":
            raise _fail(errno.EINVAL)
        self.next_tx += 1
        tx = Tx(self.next_tx, "pending", "unknown", data)
        try:
            root = decode_fdt(data).root
            fragments = self._fragments(root)
            tx.target_path = (_text(fragments[0], "target-path") if fragments else None) or "unknown"
            self._walk(root, undo=False)
            tx.status = "applied"
        except (OSError, FormatError):  # a cut blob: the kernel would parse past it; call it failed
            tx.status = "failed"  # mk_overlay_apply: the transaction is kept so the user sees it
        self.txs[tx.id] = tx
        return len(data)  # mk_overlay_apply returns the tx id even for a failed one

    @staticmethod
    def _fragments(root: FdtNode) -> list[FdtNode]:
        # overlay.c mk_overlay_collect_fragments: fragment@<hex>, ascending unit address
        frags = [c for c in root.children if c.name.startswith("fragment@")]
        return sorted(frags, key=lambda c: int(c.name.split("@", 1)[1], 16))

    def _walk(self, root: FdtNode, *, undo: bool) -> None:
        frags = self._fragments(root)
        if not frags:
            raise _fail(errno.EINVAL)
        for frag in reversed(frags) if undo else frags:  # mk_overlay_parse_and_(apply|rollback)
            target = _text(frag, "target-path")  # mk_overlay_resolve_target
            if target is None or not (target in ("/resources", "/instances") or target.startswith("/instances/")):
                raise _fail(errno.EINVAL)
            if target == "/resources" and self.baseline is None:
                raise _fail(errno.EPERM)
            if target.startswith("/instances/") and target[len("/instances/"):] not in self.instances:
                raise _fail(errno.ENOENT)
            overlay = frag.child("__overlay__")  # mk_overlay_fragment_overlay_node
            if overlay is None:
                raise _fail(errno.EINVAL)
            for op in overlay.children:
                if op.name == "instance-create":
                    if target != "/instances":  # mk_overlay_check_namespace_target
                        raise _fail(errno.EINVAL)
                    self._undo_create(op) if undo else self._create(op)
                elif op.name in ("memory-add", "memory-remove", "cpu-add", "cpu-remove", "device-add",
                                 "device-remove", "instance-remove"):
                    raise NotImplementedError(f"the stand-in does not model {op.name}")

    def _create(self, op: FdtNode) -> None:
        # overlay.c mk_overlay_op_instance_create and mk_overlay_instance_name
        name = _text(op, "instance-name")
        if not name or "/" in name:
            raise _fail(errno.EINVAL)
        mk_id = _u32(op, "id")  # a missing or non-u32 id means "allocate one"
        resources = op.child("resources")
        if resources is None:
            raise _fail(errno.EINVAL)
        chosen = op.child("chosen")  # dts.c mk_dt_parse_chosen: no properties, one host-tree node
        if chosen is not None and (chosen.properties or any(c.name != "multikernel,host-tree"
                                                              for c in chosen.children)):
            raise _fail(errno.EINVAL)
        if name in self.instances or any(i.id == mk_id for i in self.instances.values()):
            raise _fail(errno.EEXIST)
        if mk_id == 0:  # kernfs.c mk_create_instance_from_dtb: 0 is the host
            raise _fail(errno.ENOMEM)
        self._parse_resources(resources)
        self.instances[name] = Instance(mk_id if mk_id is not None else max(
            (i.id for i in self.instances.values()), default=0) + 1)

    @staticmethod
    def _parse_resources(res: FdtNode) -> None:
        # dts.c mk_dt_parse_resources: memory, cpus, numa, devices (the rows of the tree
        # oracle in tests/devicetree/test_kernel_rules.py are the full list)
        memory = res.prop("memory-bytes")
        if memory is not None and (len(memory) != 8 or not int.from_bytes(memory, "big")
                                   or int.from_bytes(memory, "big") % PAGE_BYTES):
            raise _fail(errno.EINVAL)
        cpus = res.prop("cpus")
        if cpus is not None and (len(cpus) % 8 or not cpus):
            raise _fail(errno.EINVAL)
        if res.prop("device-names") is not None:  # dts.c mk_dt_parse_devices
            raise _fail(errno.EINVAL)

    def _undo_create(self, op: FdtNode) -> None:
        # overlay.c mk_overlay_undo_instance_create: destroys the instance of that name,
        # whoever created it; kernfs.c mk_instance_destroy refuses loaded/active (-EBUSY)
        name = _text(op, "instance-name")
        inst = self.instances.get(name or "")
        if inst is None:
            return
        if inst.status in ("loaded", "active"):
            raise _fail(errno.EBUSY)
        del self.instances[name or ""]

    # ---- the syscalls and the console ---------------------------------------------------

    def _by_id(self, mk_id: int) -> Instance:
        found = next((i for i in self.instances.values() if i.id == mk_id), None)
        if found is None:
            raise _fail(errno.ENOENT)
        return found

    def kexec_file_load(self, kernel: str | None, initrd: str | None, cmdline: str | None, flags: int) -> None:
        self.calls.append(f"kexec_file_load {flags:#x}")
        inst = self._by_id((flags & multikernel.KEXEC_MK_ID_MASK) >> multikernel.KEXEC_MK_ID_SHIFT)
        if flags & syscalls.KEXEC_FILE_UNLOAD:
            if inst.status == "active":  # unloading a running instance is refused
                raise _fail(errno.EBUSY)
            inst.status = "ready"
            return
        if inst.status != "ready":  # the instance already has an image
            raise _fail(errno.EBUSY)
        if kernel is None or not os.path.isfile(kernel):
            raise _fail(errno.EBADF)
        inst.status = "loaded"

    def reboot(self, cmd: int, mk_id: int) -> None:
        self.calls.append(f"reboot {cmd:#x} {mk_id}")
        inst = self._by_id(mk_id)
        if cmd == multikernel.LINUX_REBOOT_CMD_MULTIKERNEL:
            if inst.status != "loaded":
                raise _fail(errno.EBUSY)
            inst.status = "active"
            if mk_id in self.consoles:
                os.write(self.consoles[mk_id], "".join(f"{line}\n" for line in self.spawn_console).encode())
        elif inst.status == "active":
            inst.status = "loaded"  # a halted spawn keeps its image

    def open_console(self, mk_id: int) -> int:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        self.consoles[mk_id] = write_end
        return read_end

    def close(self) -> None:
        for fd in self.consoles.values():
            os.close(fd)
        self.consoles.clear()
