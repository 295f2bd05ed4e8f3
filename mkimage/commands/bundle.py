"""`mkspawn build|sign|verify|inspect`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mkimage.commands.options import (
    F,
    echo_json,
    input_file,
    json_option,
    load_trust,
    recipe_argument,
    set_option,
    state_option,
    trust_option,
)
from mkimage.errors import UsageError

if TYPE_CHECKING:
    from mkimage.bundle.verify import BundleReport
    from mkimage.recipe.userconfig import BuildSettings
    from mkimage.signing.keys import PrivateKey

# The build side (pipeline, every stage, the system builder) and signing are imported
# inside `build` and `sign`: `verify` and `inspect` start without them; the reading side
# (verify, attestations, system manifests) inside `verify` and `inspect`: a build starts
# without it.

bundle_path = click.Path(path_type=Path, dir_okay=False)  # an output: refused early when a directory


def _key_options(f: F) -> F:
    f = click.option("--passphrase-env", default=None, metavar="VAR",
                     help="Environment variable with the key passphrase [default: MKSPAWN_KEY_PASSPHRASE].")(f)
    f = click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="File whose first line is the key passphrase.")(f)
    return f


def _farm_options(f: F) -> F:
    """This machine's [build] settings (docs/build-farms.md): the config file, then these."""
    f = click.option("--make-jobs", type=click.IntRange(1, 1024), default=None, metavar="N",
                     help="make's job count for kernel compiles; overrides [build] jobs.")(f)
    f = click.option("--distcc-hosts", default=None, metavar="SPECS",
                     help='Compile on these distcc hosts ("localhost/2 HOST:PORT/8,lzo"; "" for none); '
                          "overrides [build] distcc_hosts.")(f)
    f = click.option("--remote-cache", default=None, metavar="URL",
                     help='ccache remote storage (redis://HOST:PORT, http://HOST/PATH, "|read-only"; "" for none); '
                          "overrides [build] remote_cache.")(f)
    f = click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Build configuration file [default: $MKSPAWN_CONFIG, else "
                          "~/.config/mkspawn/config.toml when present].")(f)
    return f


def _farm(config_file: Path | None, remote_cache: str | None, distcc_hosts: str | None,
          make_jobs: int | None) -> BuildSettings:
    from mkimage.recipe.userconfig import load_user_config, with_overrides

    loaded = load_user_config(config_file, env=os.environ)
    return with_overrides(loaded.settings, remote_cache=remote_cache, distcc_hosts=distcc_hosts, jobs=make_jobs)


def _load_keys(keys: tuple[Path, ...], passphrase_file: Path | None, passphrase_env: str | None) -> list[PrivateKey]:
    from mkimage.signing.keys import PassphraseSource, load_private_key

    source = PassphraseSource(passphrase_file, passphrase_env or "MKSPAWN_KEY_PASSPHRASE")
    return [load_private_key(k, source, os.environ) for k in keys]


@click.command("build")
@recipe_argument
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Bundle file to write (for a system file: the directory).")
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Sign with this private key (repeatable); overrides [bundle] key ([system] key).")
@_key_options
@set_option
@click.option("--strict", is_flag=True, help="System files: SMT siblings split across instances is an error.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="System files: spawns packed at once [default: the number of CPUs].")
@_farm_options
@json_option
def build(recipe: Path, out: Path, keys: tuple[Path, ...], passphrase_file: Path | None,
          passphrase_env: str | None, overrides: tuple[str, ...], strict: bool, jobs: int | None,
          config_file: Path | None, remote_cache: str | None, distcc_hosts: str | None, make_jobs: int | None,
          as_json: bool) -> None:
    """Build the recipe's bundle (and sign it when a key is given).

    A system file (a top-level [system] table) builds every spawn into the directory OUT:
    one bundle each, the pool baseline and a signed system manifest (docs/systems.md)."""
    from mkimage.recipe.system import is_system_file

    farm = _farm(config_file, remote_cache, distcc_hosts, make_jobs)
    if is_system_file(recipe):
        # Only here: the system builder imports the boot check, which a recipe build never needs.
        from mkimage.commands import system as system_command

        system_command.build(recipe, out, keys, lambda ks: _load_keys(ks, passphrase_file, passphrase_env),
                             overrides=overrides, strict=strict, jobs=jobs, as_json=as_json, farm=farm)
        return
    from mkimage.pipeline import build_bundle, summary
    from mkimage.recipe.load import load_recipe

    if out.is_dir():
        raise UsageError(f"{out}: is a directory", code="bad-output")
    model = load_recipe(recipe, overrides)
    if not keys and model.bundle.key is not None:
        keys = (Path(model.bundle.key),)
        passphrase_file = passphrase_file or model.bundle.passphrase_file
        passphrase_env = passphrase_env or model.bundle.passphrase_env
    signers = _load_keys(keys, passphrase_file, passphrase_env)
    result = build_bundle(model, out, signers, overrides=overrides, farm=farm)
    if as_json:
        echo_json(summary(result))
        return
    signed = ", ".join(k[:16] + "…" for k in result.signed_by) or "unsigned"
    click.echo(f"{out}: {result.size} bytes, sha256 {result.sha256}, {signed}")


@click.command("sign")
@click.argument("bundle", type=input_file)
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Private key to sign with (repeatable).")
@click.option("-o", "--output", "out", type=bundle_path, help="Write here instead of replacing BUNDLE.")
@_key_options
@trust_option
def sign(bundle: Path, keys: tuple[Path, ...], out: Path | None, passphrase_file: Path | None,
         passphrase_env: str | None, trust_dir: Path | None) -> None:
    """Add signatures to a bundle (a key that already signed it is replaced).

    Refused (exit 3) if a signature already in the bundle does not verify under a key
    of the trust store or a signing key: the manifest changed after it was signed."""
    from mkimage.bundle.sign import sign_bundle
    from mkimage.signing.keys import key_id

    signers = _load_keys(keys, passphrase_file, passphrase_env)
    sign_bundle(bundle, out or bundle, signers, load_trust(trust_dir, must_exist=False))
    for key in signers:
        click.echo(f"signed {out or bundle} with {key_id(key.public_key())}")


@click.command("verify")
@click.argument("bundle", type=input_file)
@trust_option
@state_option
@json_option
def verify(bundle: Path, trust_dir: Path | None, state_file: Path | None, as_json: bool) -> None:
    """Verify a bundle's structure, digests and signatures (exit 3 if rejected, 5 on rollback).

    A system directory (or its system.json) is verified with every bundle it names."""
    from mkimage.bundle.system_manifest import is_system_target
    from mkimage.bundle.verify import verify_bundle

    if is_system_target(bundle):
        from mkimage.commands import system as system_command

        system_command.verify(bundle, load_trust(trust_dir), state_file, as_json)
        return
    report = verify_bundle(bundle, load_trust(trust_dir), state_file=state_file)
    if as_json:
        echo_json({"ok": True, **report.to_dict()})
        return
    keys = ", ".join(k[:16] + "…" for k in report.trusted_by)
    m = report.manifest
    click.echo(f"{bundle}: OK: {m.recipe_name} {m.recipe_version} ({m.kernel_release}), signed by {keys}")


@click.command("inspect")
@click.argument("bundle", type=input_file)
@trust_option
@json_option
def inspect(bundle: Path, trust_dir: Path | None, as_json: bool) -> None:
    """Show a bundle's components, signatures and metadata (a system directory: its instances)."""
    from mkimage.bundle.system_manifest import is_system_target
    from mkimage.bundle.verify import inspect_bundle

    if is_system_target(bundle):
        from mkimage.commands import system as system_command

        system_command.inspect(bundle, load_trust(trust_dir, must_exist=False), as_json)
        return
    report = inspect_bundle(bundle, load_trust(trust_dir, must_exist=False))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(render_report(report), nl=False)


def _instance_lines(report: BundleReport) -> list[str]:
    if report.handover is None or report.handover.instance is None:
        return []
    inst = report.handover.instance
    cpus = ", ".join(str(c) for c in inst.cpus) or "placed by the host"
    memory = f"{inst.memory_bytes:#x} bytes" if inst.memory_bytes is not None else "unset"
    return [f"instance:       {inst.name} (id {inst.id})", f"  cpus (APIC):  {cpus}", f"  memory:       {memory}"]


def _evidence_lines(report: BundleReport) -> list[str]:
    evidence = report.evidence
    if evidence is None:
        return ["", "evidence:       none (no provenance.dsse.json)"]
    lines = [""]
    if evidence.sbom is not None:
        kinds = ", ".join(f"{n} {t}" for t, n in evidence.sbom.by_type.items())
        lines.append(f"sbom:           {evidence.sbom.components} components ({kinds}), "
                     f"{len(evidence.sbom.packages)} Debian packages")
    s = evidence.statement
    signed = ", ".join(f"{k[:16]}… {status}" for k, status in evidence.signatures) or "unsigned"
    lines += [f"provenance:     SLSA v1 by {s.builder_id}: {len(s.subjects)} subjects, {len(s.inputs)} inputs, "
              f"recipe {s.recipe.name}", f"  signed:       {signed}"]
    return lines


def render_report(report: BundleReport) -> str:
    m = report.manifest
    lines = [
        f"bundle:         {report.path} ({report.size} bytes, format v{m.format_version})",
        f"recipe:         {m.recipe_name} {m.recipe_version}",
        f"arch:           {m.arch}",
        f"abi profile:    {m.abi_profile}",
        f"kernel release: {m.kernel_release}",
        f"cmdline:        {report.cmdline}",
        f"epoch:          {m.provenance.source_date_epoch}",
        *_instance_lines(report),
        "",
        f"{'ROLE':<11} {'PATH':<24} {'SIZE':>11}  {'SHA256':<16}  MEDIA TYPE",
    ]
    for c in m.components:
        lines.append(f"{c.role!s:<11} {c.path:<24} {c.size:>11}  {c.sha256[:16]}  {c.media_type}")
    lines += ["", f"{'SIGNATURE KEY ID':<66} {'SCHEME':<18} STATUS"]
    for s in report.signatures:
        lines.append(f"{s.keyid:<66} {s.scheme:<18} {s.status}")
    if not report.signatures:
        lines.append("(unsigned)")
    lines += _evidence_lines(report)
    return "\n".join(lines) + "\n"


command = [build, sign, verify, inspect]
