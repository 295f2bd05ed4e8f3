"""`mkspawn sbom|provenance|reproduce`: a bundle's supply-chain evidence.

``sbom`` and ``provenance`` print what the bundle carries (structure checked, signatures
reported by ``verify``); ``reproduce`` rebuilds the bundle and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mkimage.commands.options import echo_json, input_file, json_option
from mkimage.errors import FormatError, VerifyError


def _bundle_member(bundle: Path, which: str) -> bytes:
    from mkimage.bundle.attestations import read_envelope
    from mkimage.bundle.container import BundleHead, iter_component
    from mkimage.bundle.manifest import Role
    from mkimage.bundle.verify import opened_bundle

    with opened_bundle(bundle) as (f, contents):
        if which == "provenance":
            head = BundleHead(contents.manifest_bytes, contents.manifest, contents.signatures, contents.provenance)
            return read_envelope(bundle, head)[0].payload
        sbom = next((c for c in contents.manifest.components if c.role is Role.SBOM), None)
        if sbom is None:
            raise VerifyError(f"{bundle}: sbom.cdx.json: missing; the manifest names no sbom component",
                              code="missing-sbom")
        return b"".join(iter_component(f, contents, sbom.path))


@click.command("sbom")
@click.argument("bundle", type=input_file)
@json_option
def sbom(bundle: Path, as_json: bool) -> None:
    """Print the bundle's CycloneDX SBOM (--json: exactly the member's bytes)."""
    from mkimage.bundle.sbom import read_sbom

    data = _bundle_member(bundle, "sbom")
    try:
        summary = read_sbom(data)
    except FormatError as e:
        raise VerifyError(f"{bundle}: {e.message}", code=e.code) from None
    if as_json:
        click.echo(data.decode("utf-8"))
        return
    doc = json.loads(data)
    click.echo(f"{bundle}: CycloneDX {doc.get('specVersion')} {summary.serial_number}, "
               f"{summary.components} components ({', '.join(f'{n} {t}' for t, n in summary.by_type.items())})")
    for c in doc.get("components", []):
        digest = next((h.get("content", "") for h in c.get("hashes", []) if h.get("alg") == "SHA-256"), "")
        version = f" {c['version']}" if c.get("version") else ""
        click.echo(f"  {c.get('type', ''):<17} {c.get('name', '')}{version}  "
                   f"{c.get('purl') or (digest[:16] + '…' if digest else '')}")


@click.command("provenance")
@click.argument("bundle", type=input_file)
@json_option
def provenance(bundle: Path, as_json: bool) -> None:
    """Print the bundle's SLSA provenance statement (--json: the in-toto statement itself)."""
    from mkimage.bundle.provenance import read_statement

    payload = _bundle_member(bundle, "provenance")
    if as_json:
        click.echo(payload.decode("utf-8"))
        return
    try:
        statement = read_statement(payload)
    except FormatError as e:  # read once already by _bundle_member, so not expected
        raise VerifyError(f"{bundle}: {e.message}", code=e.code) from None
    click.echo(f"{bundle}: SLSA provenance v1, builder {statement.builder_id}")
    click.echo(f"  recipe:    {statement.recipe.name}" +
               (f" with --set {' '.join(statement.recipe.overrides)}" if statement.recipe.overrides else ""))
    click.echo("  versions:  " + ", ".join(f"{k} {v}" for k, v in statement.versions.items()))
    click.echo(f"  subjects ({len(statement.subjects)}):")
    for name, sha in statement.subjects.items():
        click.echo(f"    {sha}  {name}")
    click.echo(f"  inputs ({len(statement.inputs)}):")
    for kind, name, sha in statement.inputs:
        click.echo(f"    {sha}  {kind:<15} {name}")


@click.command("reproduce")
@click.argument("bundle", type=input_file)
@click.option("--recipe", "recipe", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Rebuild from this recipe (it must resolve to the recorded one) instead of the recorded recipe.")
@click.option("--recipe-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Where the recorded recipe's relative paths resolve: the original recipe's directory "
                   "[default: the current directory].")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Build with this cache instead of a fresh, empty one.")
@click.option("--reuse-cache", is_flag=True,
              help="Build with the default cache (fast, but a cached kernel is not rebuilt).")
@json_option
def reproduce(bundle: Path, recipe: Path | None, recipe_dir: Path | None, cache_dir: Path | None,
              reuse_cache: bool, as_json: bool) -> None:
    """Rebuild BUNDLE from its provenance and compare it component by component
    (exit 0 all equal, 3 any differs or the recipe or an input differs)."""
    from mkimage.context import default_cache_root
    from mkimage.reproduce import reproduce_bundle

    cache = cache_dir or (default_cache_root() if reuse_cache else None)
    report = reproduce_bundle(bundle, recipe_path=recipe, recipe_dir=recipe_dir, cache_root=cache)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"{bundle}: rebuilt from the {'recorded recipe' if recipe is None else recipe} "
                   f"with {'a fresh' if cache is None else 'the'} cache{'' if cache is None else f' {cache}'}")
        for r in report.results:
            click.echo(f"  {'equal' if r.equal else 'DIFFERS':<8} {r.path}" + (f": {r.detail}" if r.detail else ""))
    if not report.ok:
        differing = [r.path for r in report.results if not r.equal]
        raise VerifyError(f"{bundle}: the rebuild differs in {', '.join(differing)}", code="not-reproduced")


command = [sbom, provenance, reproduce]
