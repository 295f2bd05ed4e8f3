"""`mkspawn load`: verify a bundle, then stage it with mkspawn's loader on this host.

The loader (mkimage/loader) is the same code the QEMU check runs inside its guest.
Nothing is loaded unless the bundle verifies against the trust store.  Plain kexec
mode stages the spawn and, with --exec, jumps into it (this machine reboots into the
spawn); multikernel mode runs one instance's life cycle on a multikernel host.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from mkimage.bundle.system_manifest import is_system_target
from mkimage.bundle.verify import verify_bundle
from mkimage.commands import system as system_command
from mkimage.commands.options import input_file, load_trust, state_option, trust_option
from mkimage.commands.registry import client_options, load_registry_options, pulled_for_load
from mkimage.errors import BootCheckError
from mkimage.loader import kexec, multikernel
from mkimage.loader.errnos import LoaderError, UnsupportedHost
from mkimage.qemu.check import Mode, extract_payload
from mkimage.recipe.model import AbiProfile


@click.command("load")
@click.argument("bundle", type=input_file)
@trust_option
@state_option
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default=Mode.KEXEC.value, show_default=True)
@click.option("--profile", type=click.Choice(sorted(multikernel.PROFILES)),
              help="Multikernel ABI profile [default: the bundle's, else mk2].")
@click.option("--name", default=None, help="Multikernel instance name (unless the bundle's dtbo creates it).")
@click.option("--id", "mk_id", type=click.IntRange(1, multikernel.MK_ID_MAX), default=None,
              help="Multikernel instance id [default: read from the instance].")
@click.option("--exec", "do_exec", is_flag=True, help="kexec mode: jump into the spawn after loading (reboots).")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Multikernel mode: how long to watch the spawn's console.")
@load_registry_options
def load(bundle: Path, trust_dir: Path | None, state_file: Path | None, mode: str, profile: str | None,
         name: str | None, mk_id: int | None, do_exec: bool, timeout_s: float, insecure: bool,
         insecure_registries: tuple[str, ...], ca_cert: Path | None, registry_timeout_s: float) -> None:
    """Verify BUNDLE (a file, or a registry or oci: reference pulled into the cache) and
    load its spawn kernel on this host (exit 4 if the kernel refuses).

    A system directory (docs/systems.md) loads in multikernel mode: verified whole, its
    pool baseline applied, then every instance created, loaded and started in order."""
    trust = load_trust(trust_dir)
    if is_system_target(bundle):
        system_command.load(bundle, trust, state_file)
        return
    bundle = pulled_for_load(bundle, trust, client_options(insecure, insecure_registries, ca_cert, registry_timeout_s))
    report = verify_bundle(bundle, trust, state_file=state_file)
    chosen = AbiProfile(profile) if profile else AbiProfile(str(report.manifest.abi_profile))
    if chosen is AbiProfile.NONE:
        chosen = AbiProfile.MK2
    with tempfile.TemporaryDirectory(prefix="mkspawn-load-") as tmp:
        payload = extract_payload(bundle, report.manifest, Path(tmp), mode=Mode(mode), profile=chosen)
        try:
            if Mode(mode) is Mode.KEXEC:
                kexec.load_file(str(payload.kernel), str(payload.initrd) if payload.initrd else None,
                                payload.cmdline)
                click.echo(f"{bundle}: loaded, /sys/kernel/kexec_loaded = {kexec.kexec_loaded()}")
                if do_exec:
                    kexec.execute()
                return
            plan = multikernel.Plan(
                profile=multikernel.PROFILES[str(chosen)], kernel=str(payload.kernel),
                initrd=str(payload.initrd) if payload.initrd else None, cmdline=payload.cmdline,
                dtb=payload.dtb.read_bytes() if payload.dtb else None,
                dtbo=payload.dtbo.read_bytes() if payload.dtbo else None,
                name=name, mk_id=mk_id, ready_marker="MKSPAWN-READY", timeout_s=timeout_s)
            seen = multikernel.run_instance(plan, lambda stage, detail: click.echo(f"{stage}: {detail}"))
        except UnsupportedHost as e:
            raise BootCheckError(f"{bundle}: {e}", code="unsupported-host") from None
        except LoaderError as e:
            raise BootCheckError(f"{bundle}: {e.line()}", code=f"load-{e.name.lower()}") from None
    if not seen:
        raise BootCheckError(f"{bundle}: the spawn never printed MKSPAWN-READY within {timeout_s:g}s",
                             code="spawn-silent")


command = load
