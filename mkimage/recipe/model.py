"""The typed recipe model: one frozen dataclass per TOML section.

Field metadata is the settings table (see ``settings.py``): TOML keys equal the
attribute names, and docs/recipes.md is generated from these declarations.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.recipe import checks
from mkimage.recipe.locations import KeyLocations
from mkimage.recipe.settings import in_range, internal, matches, optional, setting, table_check
from mkimage.recipe.targets import AbiProfile, Arch


class KeyRef(str):
    """A signing key reference: a PEM path (resolved like other paths) or a URI such as
    ``pkcs11:token=a;object=b``, kept verbatim."""

    __type_name__ = "path"  # URIs are refused until a URI scheme is supported


def section(cls: type) -> type:
    """Mark a dataclass as a recipe section (a TOML table in the settings tree)."""
    cls.__section__ = True  # type: ignore[attr-defined]
    return cls


@section
@dataclass(frozen=True, slots=True)
class Metadata:
    name: str = field(
        metadata=setting(
            "Recipe name; bundles and rollback state are keyed by it.",
            check=matches(checks.NAME_RE, "a name of letters, digits, '.', '_' or '-'"),
            example='"demo-spawn"',
        )
    )
    version: str = field(
        metadata=setting(
            "Recipe version: dotted non-negative integers, compared numerically for rollback protection.",
            check=matches(checks.VERSION_RE, 'a version like "1.2.3"'),
            example='"1.0.0"',
        )
    )
    arch: Arch = field(default=Arch.X86_64, metadata=setting("Target architecture."))
    source_date_epoch: int | None = field(
        default=None,
        metadata=setting(
            "Timestamp for every mtime in the output. Unset: $SOURCE_DATE_EPOCH, else 0.",
            check=optional(in_range(0, 0xFFFFFFFF)),
        ),
    )


def _kernel_source(value: object) -> str | None:
    """Exactly one origin, with the companions it needs and none it does not."""
    if value is None:
        return None
    assert isinstance(value, KernelSource)
    given = [k for k in ("url", "tarball", "dir", "git") if getattr(value, k) is not None]
    if len(given) != 1:
        return "give exactly one of url, tarball, dir or git" + (f" (got {', '.join(given)})" if given else "")
    if value.url is not None and value.sha256 is None:
        return "url needs sha256 (the download is checked before use)"
    if value.sha256 is not None and value.url is None and value.tarball is None:
        return "sha256 applies to url or tarball only"
    if (value.git is None) != (value.rev is None):
        return "git and rev go together (pin a commit for reproducible builds)"
    return None


@dataclass(frozen=True, slots=True)
class KernelSource:
    """Where the kernel tree comes from: one of url, tarball, dir or git."""

    url: str | None = field(
        default=None,
        metadata=setting(
            "Tarball URL (http/https), fetched once and cached by sha256.",
            check=optional(matches(r"https?://\S+", "an http(s) URL")),
            example='"https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.tar.xz"',
        ),
    )
    sha256: str | None = field(
        default=None,
        metadata=setting(
            "Expected sha256 of the url (required) or tarball (optional) source.",
            check=optional(matches(checks.SHA256_RE, "64 lowercase hex digits")),
        ),
    )
    tarball: Path | None = field(
        default=None,
        metadata=setting("Local source tarball (.tar, .tar.gz, .tar.xz, ...).", check=checks.existing_file,
                         example='"/usr/src/linux-source-6.12.tar.xz"'),
    )
    dir: Path | None = field(
        default=None,
        metadata=setting("Unpacked source tree, used in place and never written to (builds use O=).",
                         check=checks.kernel_dir),
    )
    git: str | None = field(
        default=None, metadata=setting("Git repository URL or path; needs `rev`.")
    )
    rev: str | None = field(
        default=None, metadata=setting("Git commit (preferably a full hash) or tag to build.")
    )


class ConfigBase(enum.StrEnum):
    """Kernel make targets that produce a starting .config."""

    TINYCONFIG = "tinyconfig"
    DEFCONFIG = "defconfig"
    ALLNOCONFIG = "allnoconfig"


@section
@dataclass(frozen=True, slots=True)
class KernelSpec:
    image: Path | None = field(
        default=None,
        metadata=setting(
            "Prebuilt kernel image (x86 bzImage or arm64 Image) to put in the bundle.",
            check=checks.existing_file,
            example='"build/bzImage"',
        ),
    )
    vmlinux: Path | None = field(
        default=None,
        metadata=setting("Prebuilt ELF vmlinux matching `image` (needed by the mk2 ABI profile).",
                         check=checks.existing_file),
    )
    config: Path | None = field(
        default=None,
        metadata=setting("The kernel's .config, recorded in the bundle and its provenance.",
                         check=checks.existing_file),
    )
    cmdline: str = field(
        default="",
        metadata=setting("Kernel command line for the spawn.", example='"console=ttyS0 panic=-1"'),
    )
    source: KernelSource | None = field(
        default=None,
        metadata=setting(
            "Kernel source to build from (instead of a prebuilt `image`).",
            check=_kernel_source,
            example='{ tarball = "/usr/src/linux-source-6.12.tar.xz" }',
        ),
    )
    mirrors: dict[str, Path] = field(
        default_factory=dict,
        metadata=setting(
            "URL prefix → local directory; a source URL under a prefix is read from there when present.",
            example='{ "https://cdn.kernel.org/pub/" = "/srv/mirror/" }',
        ),
    )
    patches: list[Path] = field(
        default_factory=list,
        metadata=setting("Patches (.patch or mbox), applied in order with -p1.", check=checks.kernel_files,
                         example='["patches/0001-fix.patch"]'),
    )
    series: Path | None = field(
        default=None,
        metadata=setting("A quilt series file; patches are named relative to it. Not with `patches`.",
                         check=checks.existing_file),
    )
    base: ConfigBase = field(
        default=ConfigBase.TINYCONFIG,
        metadata=setting("make target giving the starting .config (ignored when `base_config` is set)."),
    )
    base_config: Path | None = field(
        default=None,
        metadata=setting("A full .config to start from instead of `base`.", check=checks.existing_file),
    )
    fragments: list[Path] = field(
        default_factory=list,
        metadata=setting(
            "Kconfig fragments merged over the base, in order; two fragments setting one symbol "
            "differently is an error.",
            check=checks.kernel_files,
            example='["../kernel/spawn-minimal.config"]',
        ),
    )
    options: dict[str, str] = field(
        default_factory=dict,
        metadata=setting(
            'Inline symbols without CONFIG_, applied last: "y", "m", "n", a number, or a quoted string.',
            check=checks.kconfig_options,
            example='{ KEXEC_FILE = "y", NR_CPUS = "8", CMDLINE = \'"console=ttyS0"\' }',
        ),
    )
    trusted_keys: Path | None = field(
        default=None,
        metadata=setting("PEM certificate(s) compiled in as CONFIG_SYSTEM_TRUSTED_KEYS (for kexec-sig.config).",
                         check=checks.existing_file),
    )
    jobs: int | None = field(
        default=None,
        metadata=setting("Parallel make jobs. Unset: the number of CPUs.",
                         check=optional(in_range(1, 1024))),
    )


class Compression(enum.StrEnum):
    """How the main initramfs archive is compressed (the kernel detects it by magic)."""

    AUTO = "auto"  # the best the kernel config allows; gzip when no config is known
    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"  # the kernel wants the legacy frame format (`lz4 -l`)

    @property
    def media_type(self) -> str:
        return "application/x-cpio" if self in (Compression.NONE, Compression.AUTO) else f"application/x-cpio+{self}"


class NodeType(enum.StrEnum):
    """Special files in the initramfs, spelled as mknod(1) and gen_init_cpio spell them."""

    CHAR = "c"
    BLOCK = "b"
    FIFO = "p"
    SOCKET = "s"


@dataclass(frozen=True, slots=True)
class FileItem:
    src: Path = field(metadata=setting("Host file to copy.", check=checks.existing_file))
    dst: str = field(metadata=setting("Path in the initramfs.", check=checks.archive_path, example='"/etc/motd"'))
    mode: int | None = field(
        default=None,
        metadata=setting("Permission bits. Unset: the source file's bits. A decimal integer above 7 is refused: "
                         "TOML reads `mode = 755` as decimal 755, which is 0o1363.", check=checks.mode_bits,
                         octal=True),
    )


@dataclass(frozen=True, slots=True)
class TreeItem:
    src: Path = field(metadata=setting("Host directory copied recursively (modes kept, owner 0:0).",
                                       check=checks.existing_dir))
    dst: str = field(
        default="/",
        metadata=setting("Directory in the initramfs it lands in.",
                         check=lambda v: checks.archive_path(v, root_ok=True)),
    )


def _device_numbers(value: object) -> tuple[str, str] | None:
    """Device nodes need both numbers (nothing defaults to 0:0); other nodes take none."""
    assert isinstance(value, NodeItem)
    given = [k for k in ("major", "minor") if getattr(value, k) is not None]
    if value.type in (NodeType.CHAR, NodeType.BLOCK):
        if len(given) < 2:
            return "", f"a type \"{value.type}\" node needs both major and minor"
    elif given:
        return given[0], f"{given[0]} applies to c and b nodes only, not type \"{value.type}\""
    return None


@table_check(_device_numbers)
@dataclass(frozen=True, slots=True)
class NodeItem:
    path: str = field(metadata=setting("Path of the node in the initramfs.", check=checks.archive_path))
    type: NodeType = field(metadata=setting("c (char device), b (block device), p (FIFO) or s (socket)."))
    major: int | None = field(
        default=None,
        metadata=setting(f"Device major number, 0..{checks.MAJOR_MAX} (required for c and b nodes).",
                         check=optional(in_range(0, checks.MAJOR_MAX))),
    )
    minor: int | None = field(
        default=None,
        metadata=setting(f"Device minor number, 0..{checks.MINOR_MAX} (required for c and b nodes).",
                         check=optional(in_range(0, checks.MINOR_MAX))),
    )
    mode: int = field(default=0o600, metadata=setting("Permission bits (in octal, as for files).",
                                                      check=checks.mode_bits, octal=True))


@dataclass(frozen=True, slots=True)
class SymlinkItem:
    path: str = field(metadata=setting("Path of the symlink in the initramfs.", check=checks.archive_path))
    target: str = field(
        metadata=setting(
            "What the link points to, stored verbatim.",
            check=lambda v: None if v else "expected a non-empty target",
        )
    )


@section
@dataclass(frozen=True, slots=True)
class InitramfsSpec:
    image: Path | None = field(
        default=None,
        metadata=setting("Prebuilt initrd (any format the kernel unpacks) to put in the bundle.",
                         check=checks.existing_file),
    )
    init: Path | None = field(
        default=None,
        metadata=setting(
            "Program or script installed as /init. Unset: the default busybox init, which mounts "
            "proc/sys/devtmpfs, prints MKSPAWN-READY, runs `command` and reboots.",
            check=checks.existing_file,
        ),
    )
    command: str = field(
        default="",
        metadata=setting("Shell command the default init runs with `sh -c` (stored at /etc/mkspawn/command).",
                         example='"cat /proc/cmdline"'),
    )
    busybox: bool = field(
        default=True,
        metadata=setting("Install /bin/busybox (Debian busybox-static) and its applet links."),
    )
    files: list[FileItem] = field(default_factory=list, metadata=setting("Host files to copy in."))
    trees: list[TreeItem] = field(default_factory=list, metadata=setting("Host directories to copy in."))
    binaries: list[Path] = field(
        default_factory=list,
        metadata=setting("Host ELF executables, copied with their shared-library closure at their host paths.",
                         check=checks.existing_files, example='["/usr/bin/python3.11"]'),
    )
    modules: list[str] = field(
        default_factory=list,
        metadata=setting(
            "Kernel modules (names as modprobe takes them; '-' and '_' are the same) copied from the built "
            "kernel's module tree with everything modules.dep says they need, indexed for `modprobe NAME`.",
            check=checks.module_names, example='["test_static_keys"]',
        ),
    )
    nodes: list[NodeItem] = field(
        default_factory=list,
        metadata=setting("Device nodes, FIFOs and sockets (no root needed). /dev/console is always added."),
    )
    symlinks: list[SymlinkItem] = field(default_factory=list, metadata=setting("Symbolic links."))
    compression: Compression = field(
        default=Compression.AUTO,
        metadata=setting("Compression of the main archive. auto: the best the kernel's .config enables "
                         "(zstd > xz > lz4 > gzip > none); gzip when [kernel] config is unset."),
    )
    microcode: list[Path] = field(
        default_factory=list,
        metadata=setting("CPU microcode (GenuineIntel.bin / AuthenticAMD.bin) for the early uncompressed "
                         "segment, placed at kernel/x86/microcode/<name>.", check=checks.microcode),
    )
    # Filled by the loader: the stage reports problems it finds with host files at the
    # recipe line that named them.
    locations: KeyLocations = field(default_factory=KeyLocations, compare=False, repr=False, metadata=internal())


@dataclass(frozen=True, slots=True)
class PoolMemoryItem:
    """One contiguous chunk of the host's multikernel memory pool."""

    size_bytes: int = field(metadata=setting("Chunk size in bytes, page aligned.", check=checks.page_bytes,
                                        example="0x40000000"))
    base: int | None = field(
        default=None,
        metadata=setting("Physical base address (page aligned). Unset: the host allocates it.",
                         check=checks.page_address),
    )
    numa_node: int | None = field(
        default=None,
        metadata=setting("NUMA node the chunk belongs to (mk2 and later).", check=optional(in_range(0, 1023))),
    )


@section
@dataclass(frozen=True, slots=True)
class DevicetreeSpec:
    """The host pool the generated baseline describes, and extra user .dts nodes."""

    pool_cpus: list[int] = field(
        default_factory=list,
        metadata=setting("APIC ids of the pool's CPUs (never 0). Unset: the instance's CPUs.", check=checks.apic_ids,
                         example="[2, 3, 4, 5]"),
    )
    pool_memory: list[PoolMemoryItem] = field(
        default_factory=list,
        metadata=setting("Pool memory chunks. Unset: one chunk the size of the instance's memory.",
                         check=checks.pool_memory, example="[{ size_bytes = 0x40000000, numa_node = 0 }]"),
    )
    smt_threads: int = field(
        default=1,
        metadata=setting("Hardware threads per core on the host: APIC ids of one core differ only in their low "
                         "log2(smt_threads) bits. Used to warn when siblings are split.", check=checks.smt_threads),
    )
    instance_dts: Path | None = field(
        default=None,
        metadata=setting("A .dts of extra nodes merged into the generated instance tree (node definitions "
                         "such as `/ { … };`, no /dts-v1/ header).", check=checks.existing_file),
    )
    baseline_dts: Path | None = field(
        default=None,
        metadata=setting("A .dts of extra nodes merged into the generated pool baseline (no /dts-v1/ header).",
                         check=checks.existing_file),
    )


@section
@dataclass(frozen=True, slots=True)
class AcpiSpec:
    """ACPI tables given to the spawn through the initrd's early segment
    (Documentation/admin-guide/acpi/initrd_table_override.rst)."""

    tables: list[Path] = field(
        default_factory=list,
        metadata=setting("ACPI tables: .asl sources (compiled with iasl) or compiled .aml. They go under "
                         "kernel/firmware/acpi/ in the early initrd; the spawn needs CONFIG_ACPI_TABLE_UPGRADE.",
                         check=checks.acpi_tables, example='["acpi/ssdt-spawn.asl"]'),
    )


@dataclass(frozen=True, slots=True)
class DeviceItem:
    """A device given to the instance: PCI (`pci` + ids), or platform (`platform` or `acpi_hid`)."""

    pci: str | None = field(default=None, metadata=setting("PCI address, e.g. \"0000:09:00.0\".", check=checks.bdf))
    vendor_id: int | None = field(
        default=None, metadata=setting("PCI vendor id (with `pci`).", check=optional(in_range(0, 0xFFFF))))
    device_id: int | None = field(
        default=None, metadata=setting("PCI device id (with `pci`).", check=optional(in_range(0, 0xFFFF))))
    alias: str | None = field(
        default=None,
        metadata=setting("Name in /aliases; a spawn renames a network device to it, e.g. \"eth0\".",
                         check=optional(matches(checks.DT_ALIAS_RE, "lowercase letters, digits and '-'"))),
    )
    platform: str | None = field(
        default=None, metadata=setting("Platform device by driver name, e.g. \"serial8250\".",
                                       check=optional(matches(r"[A-Za-z0-9_.,+-]+", "a driver name"))))
    acpi_hid: str | None = field(
        default=None, metadata=setting("Platform device by ACPI hardware id, e.g. \"PNP0501\".",
                                       check=optional(matches(checks.ACPI_HID_RE, 'an ACPI id like "PNP0501"'))))


@dataclass(frozen=True, slots=True)
class PreserveItem:
    """Memory the spawn asks the host to keep across its restarts (a KHO-style request)."""

    name: str = field(metadata=setting("Request name (a device-tree node name).",
                                       check=matches(checks.DT_NODE_RE, "a device-tree node name")))
    size_bytes: int = field(metadata=setting("Size in bytes, page aligned.", check=checks.page_bytes))


@section
@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str | None = field(
        default=None,
        metadata=setting("Multikernel instance name.", check=optional(matches(checks.NAME_RE, "a name"))),
    )
    id: int | None = field(
        default=None,
        metadata=setting(
            "Multikernel instance id (KEXEC_MK_ID, 11 bits).",
            check=optional(in_range(1, 2047)),
        ),
    )
    profile: AbiProfile = field(
        default=AbiProfile.NONE,
        metadata=setting("Multikernel ABI profile the spawn targets (see multikernel-abi.md)."),
    )
    cpus: list[int] = field(
        default_factory=list,
        metadata=setting("Physical APIC ids of the spawn's CPUs (not logical numbers; never 0, the boot CPU). "
                         "Not with `cpu_count`.", check=checks.apic_ids, example="[2, 3]"),
    )
    cpu_count: int | None = field(
        default=None,
        metadata=setting("Number of CPUs, placed on [devicetree] pool_cpus (lowest whole cores first) when the "
                         "trees are generated. Not with `cpus`.", check=optional(in_range(1, 8192))),
    )
    memory_bytes: int | None = field(
        default=None,
        metadata=setting("Instance memory in bytes, page aligned.", check=checks.page_bytes, example="0x10000000"),
    )
    memory_base: int | None = field(
        default=None,
        metadata=setting("Physical base of the instance memory inside the pool. Unset: the host chooses.",
                         check=checks.page_address),
    )
    numa_nodes: list[int] = field(
        default_factory=list,
        metadata=setting("NUMA nodes the instance's memory comes from (mk2 and later).", check=checks.numa_nodes),
    )
    devices: dict[str, DeviceItem] = field(
        default_factory=dict,
        metadata=setting("Devices by node name: PCI (pci, vendor_id, device_id, alias) or platform "
                         "(platform or acpi_hid).", check=checks.devices,
                         example='{ nic0 = { pci = "0000:09:00.0", vendor_id = 0x1af4, device_id = 0x1041, '
                                 'alias = "eth0" } }'),
    )
    cmdline: str = field(
        default="",
        metadata=setting("Appended to [kernel] cmdline for this instance's spawn.", example='"console=mktty0"'),
    )
    preserve: list[PreserveItem] = field(
        default_factory=list,
        metadata=setting("Preserved-memory requests carried in the handover FDT.", check=checks.preserve,
                         example='[{ name = "ring", size_bytes = 0x100000 }]'),
    )


@dataclass(frozen=True, slots=True)
class KernelSigning:
    key: Path = field(metadata=setting("PEM private key that Authenticode-signs the kernel image (sbsign).",
                                       check=checks.existing_file, example='"keys/kernel.key"'))
    cert: Path = field(metadata=setting("PEM certificate of `key`; it needs an Authority Key Identifier to chain "
                                        "to the host's trusted CA.",
                                        check=checks.existing_file, example='"keys/kernel.crt"'))


@section
@dataclass(frozen=True, slots=True)
class BundleSpec:
    key: KeyRef | None = field(
        default=None,
        metadata=setting(
            "Private key (PEM path, relative to the recipe) that signs the bundle at build time.",
            example='"keys/release.pem"',
        ),
    )
    passphrase_file: Path | None = field(
        default=None,
        metadata=setting("File holding the key's passphrase (first line).", check=checks.existing_file),
    )
    passphrase_env: str = field(
        default="MKSPAWN_KEY_PASSPHRASE",
        metadata=setting("Environment variable holding the key's passphrase, if no file is given."),
    )
    kernel_signing: KernelSigning | None = field(
        default=None,
        metadata=setting("Authenticode-sign the kernel image (needs EFI_STUB) for hosts that enforce kexec signatures.",
                         example='{ key = "keys/kernel.key", cert = "keys/kernel.crt" }'),
    )


@section
@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How `mkspawn check --recipe` boots this recipe's bundle."""

    @staticmethod
    def regex_problem(value: object) -> str | None:
        import re  # only here: the rest of the model needs no regex compilation

        try:
            re.compile(str(value))
        except re.error as e:
            return f"not a regular expression: {e}"
        return None

    expect: str = field(
        default="",
        metadata=setting(
            "Regular expression the spawn's console must print after the check's nonce (empty: the nonce is enough).",
            check=lambda v: CheckSpec.regex_problem(v),
            example='"MKSPAWN-DONE rc=0"',
        ),
    )
    timeout_s: int = field(
        default=90,
        metadata=setting("Deadline for the whole QEMU run, in seconds.", check=in_range(5, 3600)),
    )
    host_kernel: Path | None = field(
        default=None,
        metadata=setting("Prebuilt host kernel to boot the check in (instead of `host_recipe`).",
                         check=checks.existing_file),
    )
    host_recipe: Path | None = field(
        default=None,
        metadata=setting("Recipe whose kernel is the check's host. Unset (and no `host_kernel`): a kexec "
                         "check boots Debian's prebuilt cloud kernel, fetched once into the cache; a "
                         "multikernel check, or a builder without apt, builds recipes/qemu-host.toml.",
                         check=checks.existing_file,
                         example='"qemu-host.toml"'),
    )


@dataclass(frozen=True, slots=True)
class Recipe:
    metadata: Metadata
    kernel: KernelSpec = field(default_factory=KernelSpec)
    initramfs: InitramfsSpec = field(default_factory=InitramfsSpec)
    devicetree: DevicetreeSpec = field(default_factory=DevicetreeSpec)
    acpi: AcpiSpec = field(default_factory=AcpiSpec)
    instance: InstanceSpec = field(default_factory=InstanceSpec)
    bundle: BundleSpec = field(default_factory=BundleSpec)
    check: CheckSpec = field(default_factory=CheckSpec)
    path: Path | None = field(default=None, compare=False)


SECTIONS: tuple[str, ...] = (
    "metadata",
    "kernel",
    "initramfs",
    "devicetree",
    "acpi",
    "instance",
    "bundle",
    "check",
)

__all__ = [
    "AbiProfile",
    "Arch",
    "BundleSpec",
    "CheckSpec",
    "InitramfsSpec",
    "InstanceSpec",
    "KernelSpec",
    "KeyRef",
    "Metadata",
    "Recipe",
    "SECTIONS",
]
