"""`mkspawn push|pull`: bundles through OCI registries and OCI image layouts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import click

from mkimage.commands.options import F, echo_json, json_option, load_trust, state_option, trust_option
from mkimage.context import default_cache_root
from mkimage.errors import UsageError
from mkimage.registry.client import ClientOptions
from mkimage.registry.reference import Ref, RegistryRef, looks_like_host, parse_reference
from mkimage.registry.transfer import PullResult, open_store, pull_bundle, push_bundle
from mkimage.signing.trust import TrustStore

bundle_path = click.Path(path_type=Path, dir_okay=False)


def _registry_options(timeout_flag: str, timeout_dest: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = click.option(timeout_flag, timeout_dest, type=click.FloatRange(min=1), default=60.0, show_default=True,
                         help="Seconds to wait for a registry connection or for the next bytes of a transfer.")(f)
        f = click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                         help="Also trust this CA certificate (PEM) for the registry's TLS.")(f)
        f = click.option("--insecure-registry", "insecure_registries", multiple=True, metavar="HOST",
                         help="Allow --insecure for this non-loopback registry host (repeatable).")(f)
        f = click.option("--insecure", is_flag=True, help="Plain HTTP (loopback registries only, unless named "
                         "with --insecure-registry).")(f)
        return f

    return decorate


registry_options = _registry_options("--timeout", "timeout_s")
# `load` has its own --timeout (the spawn's console), so its registry one is spelled out.
load_registry_options = _registry_options("--registry-timeout", "registry_timeout_s")


def client_options(insecure: bool, insecure_registries: tuple[str, ...], ca_cert: Path | None,
                   timeout_s: float) -> ClientOptions:
    return ClientOptions(insecure=insecure, insecure_registries=frozenset(insecure_registries), ca_cert=ca_cert,
                         connect_timeout_s=min(timeout_s, 10.0), timeout_s=timeout_s, env=dict(os.environ))


def pull_to(ref: Ref, out: Path, trust: TrustStore, state_file: Path | None, options: ClientOptions) -> PullResult:
    """Pull ``ref`` into ``out`` (verified); shared with ``load REF``."""
    if out.is_dir():
        raise UsageError(f"{out}: is a directory", code="bad-output")
    with open_store(ref, options, push=False) as store:
        return pull_bundle(ref, store, out, trust, state_file=state_file)


@click.command("push")
@click.argument("bundle", type=bundle_path)
@click.argument("reference", metavar="REF")
@click.option("--from", "mount_from", multiple=True, metavar="REPO",
              help="Mount blobs this repository of the same registry holds instead of uploading them "
                   "(repeatable; e.g. the staging repository a release is promoted from).")
@registry_options
@json_option
def push(bundle: Path, reference: str, mount_from: tuple[str, ...], insecure: bool,
         insecure_registries: tuple[str, ...], ca_cert: Path | None, timeout_s: float, as_json: bool) -> None:
    """Publish BUNDLE at REF (HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG]); prints the manifest digest."""
    ref = parse_reference(reference)
    if ref.digest is not None:
        raise UsageError(f"{reference}: push takes a tag, not a digest (the digest is the result)",
                         code="bad-reference")
    sources = [_source_repository(ref, name) for name in mount_from]
    options = client_options(insecure, insecure_registries, ca_cert, timeout_s)
    with open_store(ref, options, push=True) as store:
        result = push_bundle(bundle, ref, store, mount_from=sources)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.digest)


def _source_repository(ref: Ref, name: str) -> str:
    """A ``--from`` repository: a name on the registry of ``ref`` (or that registry's
    HOST/REPO spelled out)."""
    if not isinstance(ref, RegistryRef):
        raise UsageError(f"--from {name}: an OCI layout has no other repositories to mount from",
                         code="bad-reference")
    # As in docker's names: a first component with a '.' or ':' (or localhost) is a host.
    named_host = looks_like_host(name.split("/", 1)[0]) and "/" in name
    source = parse_reference(name if named_host else f"{ref.host}/{name}")
    if not isinstance(source, RegistryRef) or source.host != ref.host or source.tag or source.digest:
        raise UsageError(f"--from {name}: expected a repository of {ref.host}, without a tag",
                         code="bad-reference")
    return source.repository


@click.command("pull")
@click.argument("reference", metavar="REF")
@click.option("-o", "--output", "out", type=bundle_path, required=True, help="Bundle file to write.")
@trust_option
@state_option
@registry_options
@json_option
def pull(reference: str, out: Path, trust_dir: Path | None, state_file: Path | None, insecure: bool,
         insecure_registries: tuple[str, ...], ca_cert: Path | None, timeout_s: float, as_json: bool) -> None:
    """Fetch the bundle at REF, verify it like `mkspawn verify`, and only then write it
    (exit 3 if rejected, 5 on rollback; nothing is written then)."""
    ref = parse_reference(reference)
    trust = load_trust(trust_dir)
    options = client_options(insecure, insecure_registries, ca_cert, timeout_s)
    result = pull_to(ref, out, trust, state_file, options)
    if as_json:
        echo_json(result.to_dict())
        return
    m = result.report.manifest
    keys = ", ".join(k[:16] + "…" for k in result.report.trusted_by)
    click.echo(f"{out}: OK: {m.recipe_name} {m.recipe_version} ({m.kernel_release}) from {ref}@{result.digest}, "
               f"signed by {keys}")


command = [push, pull]


def pulled_for_load(argument: Path, trust: TrustStore, options: ClientOptions) -> Path:
    """``load REF``: an argument that is no file but parses as a reference is pulled (and
    verified) into the cache first; anything else is left for ``load`` to open as a file."""
    if argument.exists():
        return argument
    try:
        ref = parse_reference(str(argument))
    except UsageError:
        return argument
    name = hashlib.sha256(str(ref).encode()).hexdigest()[:32]
    return pull_to(ref, default_cache_root() / "pulled" / f"{name}.mkb", trust, None, options).path
