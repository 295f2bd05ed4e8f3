"""`mkspawn build`: recipe → stage outputs → one signed, deterministic bundle file.

The orchestration sits above every stage (it is the one module that calls them all), so
`mkimage/bundle/` stays the container format and nothing else.

The build plans everything first (key loaded, inputs read, contract checked), then
writes the bundle through a temp file so a failure never leaves a partial bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mkimage import __version__, assets
from mkimage.acpi.build import build_acpi, early_files
from mkimage.artifacts import Artifact
from mkimage.bundle.container import read_bundle, write_bundle
from mkimage.bundle.manifest import (
    Component,
    Input,
    InputKind,
    Manifest,
    Provenance,
    Role,
)
from mkimage.bundle.media import CMDLINE_MEDIA, CONFIG_MEDIA, KERNEL_MEDIA, VMLINUX_MEDIA, initrd_media_type
from mkimage.bundle.provenance import Envelope, RecipeParameters, make_envelope, make_statement
from mkimage.bundle.sign import make_signature
from mkimage.context import default_cache_root
from mkimage.devicetree.build import build_devicetree
from mkimage.digests import file_sha256
from mkimage.errors import FormatError, InputError, MkspawnError
from mkimage.evidence import recipe_input, recipe_parameters, sbom_artifact
from mkimage.handover.build import build_handover, spawn_cmdline
from mkimage.initramfs.build import build_initramfs
from mkimage.kernel.build import KernelBuild, build_kernel
from mkimage.kernel.contract import check_image
from mkimage.kernel.release import kernel_release
from mkimage.outputs import atomic_output, write_atomic
from mkimage.recipe.model import AbiProfile, Arch, Recipe
from mkimage.recipe.userconfig import BuildSettings
from mkimage.signing.authenticode import sign_image
from mkimage.signing.keys import PrivateKey, key_id, verify_bytes

log = logging.getLogger("mkspawn")

class BundleBuildError(MkspawnError):
    code = "build-failed"


@dataclass(frozen=True, slots=True)
class BuildResult:
    path: Path
    size: int
    sha256: str
    manifest: Manifest
    signed_by: tuple[str, ...]
    reused: bool = False  # the bundle at ``reuse`` was kept: nothing was packed or signed


@dataclass(slots=True)
class _Plan:
    files: list[Artifact] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)
    config_sha256: str = ""
    kernel_config: Path | None = None  # the spawn's .config, when known
    early_files: list[tuple[str, Path]] = field(default_factory=list)
    modules_dir: Path | None = None  # lib/modules/<release> of a kernel built with modules
    digests: dict[Path, str] = field(default_factory=dict)

    def sha256(self, path: Path) -> str:
        """Each file is hashed once per build, however many records name it."""
        if path not in self.digests:
            self.digests[path] = file_sha256(path)
        return self.digests[path]



def _readable(path: Path, key: str) -> Path:
    if not path.is_file():
        raise InputError(f"[{key.split('.')[0]}] {key.split('.', 1)[1]}: no such file: {path}", code="no-such-file")
    return path


def _authenticode(recipe: Recipe, image: Path, work_dir: Path) -> Path:
    """Sign the exact bytes the host's kexec_file_load will see; nothing touches them after."""
    signing = recipe.bundle.kernel_signing
    if signing is None:
        return image
    return sign_image(image, signing.key, signing.cert, work_dir / f"{image.name}.signed")


@dataclass(frozen=True, slots=True)
class _KernelFiles:
    image: Path
    vmlinux: Path | None
    config: Path | None


def _compiled_kernel(recipe: Recipe, plan: _Plan, cache_root: Path, built: KernelBuild | None,
                     farm: BuildSettings | None = None) -> _KernelFiles:
    """``built``: this recipe's kernel as the caller just loaded it from the cache (a system
    build checks each distinct kernel once, not once per spawn)."""
    epoch = recipe.metadata.source_date_epoch
    assert epoch is not None
    if built is None:
        built = build_kernel(recipe.kernel, arch=recipe.metadata.arch.value, cache_root=cache_root,
                             source_date_epoch=epoch, farm=farm)
    # Base names: the digests identify the content, and absolute paths would differ per checkout.
    plan.inputs.extend(Input(InputKind(kind), Path(name).name, digest) for kind, name, digest in built.inputs)
    plan.tools.update(built.tools)
    plan.modules_dir = built.modules_dir
    plan.digests.update(built.digests)
    wants_vmlinux = recipe.instance.profile in (AbiProfile.MK2, AbiProfile.MK_MASTER)
    return _KernelFiles(built.image, built.vmlinux if wants_vmlinux else None, built.config)


def _prebuilt_kernel(recipe: Recipe, plan: _Plan) -> _KernelFiles:
    spec = recipe.kernel
    assert spec.image is not None  # the loader requires image or source
    files = _KernelFiles(
        _readable(spec.image, "kernel.image"),
        None if spec.vmlinux is None else _readable(spec.vmlinux, "kernel.vmlinux"),
        None if spec.config is None else _readable(spec.config, "kernel.config"),
    )
    for kind, path in (("kernel", files.image), ("vmlinux", files.vmlinux)):
        if path is not None:
            plan.inputs.append(Input(InputKind.PREBUILT, f"{kind}/{path.name}", plan.sha256(path)))
    return files


def _stage_kernel(recipe: Recipe, plan: _Plan, work_dir: Path, cache_root: Path,
                  built: KernelBuild | None = None, farm: BuildSettings | None = None) -> Path:
    if recipe.kernel.source is not None:
        files = _compiled_kernel(recipe, plan, cache_root, built, farm)
    else:
        files = _prebuilt_kernel(recipe, plan)
    _check_contract(recipe, files, plan, cache_root)
    image = _authenticode(recipe, files.image, work_dir)
    arch = recipe.metadata.arch
    plan.files.append(Artifact(Role.KERNEL, _kernel_name(arch), image, KERNEL_MEDIA[arch]))
    if files.vmlinux is not None:
        plan.files.append(Artifact(Role.VMLINUX, "vmlinux", files.vmlinux, VMLINUX_MEDIA))
    if files.config is not None:
        plan.config_sha256 = plan.sha256(files.config)
        plan.kernel_config = files.config
        plan.files.append(Artifact(Role.CONFIG, "config", files.config, CONFIG_MEDIA))
    return image


def _kernel_name(arch: Arch) -> str:
    return "bzImage" if arch is Arch.X86_64 else "Image"


# Host files under these stay absolute: they name the same thing on every Debian host
# (a packed /bin/busybox); anything else is somebody's checkout, home or temp directory.
SYSTEM_DIRS = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"))


def _input_name(path: Path, recipe: Recipe, work_dir: Path, cache_root: Path) -> str:
    """A provenance name for a host file that is the same on every host building the
    recipe: no checkout, home, cache or temp path reaches the bundle.

    Recipe files are named relative to the recipe, mkspawn's own files ``mkspawn:<path>``
    (the same whether mkspawn runs from its checkout or a wheel), files this build made
    ``build:<path>``, cache files ``cache:<path>``; system files keep their absolute
    path, and any other file is named relative to the recipe.
    """
    assert recipe.path is not None
    recipe_dir = recipe.path.parent.resolve()
    real = path.resolve()
    if real.is_relative_to(recipe_dir):
        return real.relative_to(recipe_dir).as_posix()
    own = assets.builtin_name(real) or assets.package_name(real)
    if own is not None:
        return f"mkspawn:{own}"
    for prefix, root in (("build:", work_dir.resolve()), ("cache:", cache_root.resolve())):
        if real.is_relative_to(root):
            return prefix + real.relative_to(root).as_posix()
    if any(path.is_relative_to(d) for d in SYSTEM_DIRS):
        return path.as_posix()
    return Path(os.path.relpath(real, recipe_dir)).as_posix()


def _build_initrd(recipe: Recipe, plan: _Plan, work_dir: Path, cache_root: Path) -> None:
    epoch = recipe.metadata.source_date_epoch
    assert epoch is not None
    result = build_initramfs(recipe.initramfs, work_dir / "initrd", source_date_epoch=epoch,
                             kernel_config=plan.kernel_config, early_files=plan.early_files,
                             modules_dir=plan.modules_dir, arch=recipe.metadata.arch, cache_root=cache_root,
                             durable=False)  # read into the bundle, then gone with work_dir
    plan.files.append(Artifact(Role.INITRD, "initrd", result.path, result.media_type))
    plan.tools.update(result.tools)
    plan.inputs.extend(Input(InputKind.FILE, _input_name(Path(name), recipe, work_dir, cache_root), digest)
                       for name, digest in result.inputs)


def _stage_initrd(recipe: Recipe, plan: _Plan, work_dir: Path, cache_root: Path) -> None:
    image = recipe.initramfs.image
    if image is None:
        _build_initrd(recipe, plan, work_dir, cache_root)
        return
    if plan.early_files:
        raise InputError("[acpi] tables: ACPI tables go into the initrd's early segment, which mkspawn "
                         "cannot add to a prebuilt [initramfs] image", code="conflicting-keys")
    image = _readable(image, "initramfs.image")
    with image.open("rb") as f:
        media = initrd_media_type(f.read(8))
    plan.files.append(Artifact(Role.INITRD, "initrd", image, media))
    plan.inputs.append(Input(InputKind.PREBUILT, f"initrd/{image.name}", plan.sha256(image)))


def _stage_hardware(recipe: Recipe, plan: _Plan, work_dir: Path) -> None:
    """Device trees and ACPI tables; ACPI tables also feed the initrd's early segment."""
    plan.files.extend(build_devicetree(recipe, work_dir))
    acpi = build_acpi(recipe, work_dir, kernel_config=plan.kernel_config)
    plan.files.extend(acpi)
    plan.early_files = early_files(acpi)


def _stage_cmdline(recipe: Recipe, plan: _Plan, work_dir: Path) -> None:
    path = work_dir / "cmdline"
    path.write_bytes(spawn_cmdline(recipe).encode("utf-8"))
    plan.files.append(Artifact(Role.CMDLINE, "cmdline", path, CMDLINE_MEDIA))


def _stage_handover(recipe: Recipe, plan: _Plan, work_dir: Path) -> None:
    """Last, because it records the digests of the images and trees it hands over."""
    counts: dict[Role, int] = {}
    for f in plan.files:
        counts[f.role] = counts.get(f.role, 0) + 1
    digests = {f.role.value: plan.sha256(f.path) for f in plan.files if counts[f.role] == 1}
    plan.files.extend(build_handover(recipe, work_dir, digests))


def _check_contract(recipe: Recipe, files: _KernelFiles, plan: _Plan, cache_root: Path) -> None:
    """Refuse any kernel the target loader would reject, before it is signed or packed.

    Every kernel file goes through the full static contract, the same rules as
    ``check --static``: the bzImage (or Image) the bundle carries and, when there is one,
    the vmlinux a multikernel loader takes.  A prebuilt file or a cache entry cut short
    or corrupted fails here rather than on the host.  A pass is remembered by the bytes'
    digest (:func:`_contract_memo`), so a rebuild does not inflate the payload again.
    """
    profile = recipe.instance.profile
    if profile is AbiProfile.MK2 and files.vmlinux is None:
        raise InputError(f"[kernel] vmlinux: profile '{profile}' loads an ELF vmlinux; set kernel.vmlinux",
                         code="missing-vmlinux")
    cmdline = spawn_cmdline(recipe).encode()
    for target in (files.image, files.vmlinux):
        if target is None:
            continue
        memo = _contract_memo(cache_root, plan.sha256(target), profile, recipe.metadata.arch, cmdline)
        if memo.is_file():
            continue
        report = check_image(target, abi_profile=profile.value, arch=recipe.metadata.arch.value, cmdline=cmdline)
        if not report.ok:
            first = report.failures[0]
            raise BundleBuildError(
                f"{target.name}: fails the {profile} loader contract: {first.name}: {first.detail}",
                code="contract-failed",
            )
        with contextlib.suppress(OSError):  # a cache that cannot be written costs the next build time only
            write_atomic(memo, b"passed\n")


# Bump when what a remembered contract pass stands for changes.
CONTRACT_MEMO_VERSION = 1


def _contract_memo(cache_root: Path, sha256: str, profile: AbiProfile, arch: Arch, cmdline: bytes) -> Path:
    """Where a pass of these bytes, for this profile, arch and command line, by this
    checker, is remembered.  The check inflates the whole payload (0.1 s or more); its
    answer depends on nothing but these inputs and the kernel stage's code, whose sources
    are part of the key."""
    checker = hashlib.sha256()
    for source in sorted(Path(str(sys.modules[check_image.__module__].__file__)).parent.glob("*.py")):
        checker.update(source.name.encode() + b"\0" + source.read_bytes())
    key = f"{CONTRACT_MEMO_VERSION}|{checker.hexdigest()}|{sha256}|{profile}|{arch}|{cmdline.hex()}"
    return cache_root / "contract" / hashlib.sha256(key.encode()).hexdigest()


def _release(kernel: Path) -> str:
    return kernel_release(kernel.read_bytes())


def _tools() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "cryptography": importlib.metadata.version("cryptography"),
    }


def plan_manifest(recipe: Recipe, work_dir: Path, cache_root: Path,
                  params: RecipeParameters | None = None, *,
                  kernel_build: KernelBuild | None = None,
                  farm: BuildSettings | None = None) -> tuple[Manifest, list[Artifact]]:
    plan = _Plan(tools=_tools())
    plan.inputs.append(recipe_input(params or recipe_parameters(recipe, ())))
    kernel = _stage_kernel(recipe, plan, work_dir, cache_root, kernel_build, farm)
    _stage_hardware(recipe, plan, work_dir)
    _stage_initrd(recipe, plan, work_dir, cache_root)
    _stage_cmdline(recipe, plan, work_dir)
    _stage_handover(recipe, plan, work_dir)
    release = _release(kernel)
    # Last: the SBOM describes every other component.
    plan.files.append(sbom_artifact(recipe, kernel_release=release, config_sha256=plan.config_sha256,
                                    mkspawn_version=__version__,
                                    members=[(f, plan.sha256(f.path)) for f in plan.files],
                                    inputs=plan.inputs, work_dir=work_dir, cache_root=cache_root))
    components = [
        Component(role=f.role, path=f.member, size=f.path.stat().st_size, sha256=plan.sha256(f.path),
                  media_type=f.media_type)
        for f in plan.files
    ]
    epoch = recipe.metadata.source_date_epoch
    assert epoch is not None  # the loader resolves it
    manifest = Manifest.build(
        recipe_name=recipe.metadata.name,
        recipe_version=recipe.metadata.version,
        arch=recipe.metadata.arch,
        abi_profile=recipe.instance.profile,
        kernel_release=release,
        components=components,
        provenance=Provenance(
            source_date_epoch=epoch,
            mkspawn_version=__version__,
            tools=plan.tools,
            inputs=tuple(plan.inputs),
            config_sha256=plan.config_sha256,
        ),
    )
    return manifest, plan.files


def build_bundle(recipe: Recipe, out: Path, signers: Sequence[PrivateKey] = (), *,
                 cache_root: Path | None = None, overrides: Sequence[str] = (),
                 params: RecipeParameters | None = None, kernel_build: KernelBuild | None = None,
                 reuse: Path | None = None, farm: BuildSettings | None = None) -> BuildResult:
    """``overrides`` are the --set options the recipe was loaded with, for the provenance
    (``params``, when given, is what the provenance records instead: `reproduce`).

    ``reuse``: an earlier build of the same bundle.  After planning (every stage a cache
    hit on a no-op), it becomes ``out`` (a hard link, nothing packed or signed) when
    :func:`_reusable` finds it is exactly what this build would write; anything else
    about it, tampered, stale or signed by other keys, and the bundle is built anew."""
    params = params or recipe_parameters(recipe, overrides)
    with tempfile.TemporaryDirectory(prefix="mkspawn-build-") as tmp:
        manifest, files = plan_manifest(recipe, Path(tmp), cache_root or default_cache_root(), params,
                                        kernel_build=kernel_build, farm=farm)
        manifest_bytes = manifest.to_bytes()
        if reuse is not None and _link_reusable(reuse, out, manifest, manifest_bytes, params, signers):
            log.info("kept %s: its manifest, signatures and provenance are what this build makes", out)
            return BuildResult(out, out.stat().st_size, file_sha256(out), manifest,
                               tuple(key_id(k.public_key()) for k in signers), reused=True)
        signatures = [make_signature(key, manifest_bytes) for key in signers]
        provenance = make_envelope(manifest, manifest_bytes, params, signers)
        with atomic_output(out) as f:
            write_bundle(f, manifest_bytes, signatures, [(s.member, s.path) for s in files],
                         manifest.provenance.source_date_epoch, provenance=provenance)
    log.info("wrote %s", out)
    return BuildResult(out, out.stat().st_size, file_sha256(out), manifest,
                       tuple(key_id(k.public_key()) for k in signers))


def _link_reusable(reuse: Path, out: Path, manifest: Manifest, manifest_bytes: bytes, params: RecipeParameters,
                   signers: Sequence[PrivateKey]) -> bool:
    """Hard-link ``reuse`` to ``out`` if it is the bundle this build would write; the
    check runs on the linked file, so what was checked is what stays."""
    try:
        if not stat.S_ISREG(os.lstat(reuse).st_mode):
            return False
        os.link(reuse, out)
    except OSError:
        return False
    if _reusable(out, manifest, manifest_bytes, params, signers):
        return True
    out.unlink()
    return False


def _reusable(path: Path, manifest: Manifest, manifest_bytes: bytes, params: RecipeParameters,
              signers: Sequence[PrivateKey]) -> bool:
    """Whether ``path`` is byte for byte what writing this build would give, without
    packing or signing: the container reader accepts only the canonical layout (member
    order, headers, padding, every mtime the manifest's epoch) and checks every
    component against the manifest; the manifest bytes are this build's; the
    signatures, one per signer and no other, verify over them, as the provenance
    envelope's do over this build's statement.  A signature by a deterministic scheme
    (Ed25519, the default) that verifies is the one signing would make again; ECDSA
    and RSA-PSS signatures are random, so no two fresh builds agree on them anyway."""
    publics = {key_id(k.public_key()): k.public_key() for k in signers}
    try:
        with path.open("rb") as f:
            contents = read_bundle(f)
        if contents.manifest_bytes != manifest_bytes or contents.provenance is None:
            return False
        sigs = {sig.keyid: sig for _, sig in contents.signatures}
        if sigs.keys() != publics.keys() or not all(
                verify_bytes(publics[k], s.scheme, manifest_bytes, bytes.fromhex(s.sig)) for k, s in sigs.items()):
            return False
        envelope = Envelope.from_bytes(contents.provenance)
        statement = make_statement(manifest, manifest_bytes, params)
        return (envelope.payload == statement and envelope.to_bytes() == contents.provenance
                and {k for k, _ in envelope.signatures} == publics.keys()
                and all(envelope.verifies(k, key) for k, key in publics.items()))
    except (OSError, ValueError, FormatError):
        return False


def summary(result: BuildResult) -> Mapping[str, object]:
    return {
        "bundle": str(result.path),
        "size": result.size,
        "sha256": result.sha256,
        "recipe": f"{result.manifest.recipe_name} {result.manifest.recipe_version}",
        "kernel_release": result.manifest.kernel_release,
        "signed_by": list(result.signed_by),
    }
