"""`mkspawn keygen`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mkimage.errors import UsageError
from mkimage.signing.keys import Algorithm, PassphraseSource, generate_key, key_id, save_keypair


@click.command("keygen")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Private key file to write (PEM, mode 0600); the public key goes to NAME.pub.pem.")
@click.option("--algorithm", type=click.Choice([a.value for a in Algorithm]), default=Algorithm.ED25519.value,
              show_default=True)
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Encrypt the key with the passphrase in this file (first line).")
@click.option("--passphrase-env", default=None, metavar="VAR",
              help="Encrypt the key with the passphrase in this environment variable.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(out: Path, algorithm: str, passphrase_file: Path | None, passphrase_env: str | None, force: bool) -> None:
    """Generate a signing key pair."""
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)", code="exists")
    passphrase = None
    if passphrase_file or passphrase_env:
        source = PassphraseSource(passphrase_file, passphrase_env or "")
        passphrase = source.read(os.environ)
        if not passphrase:
            raise UsageError("the passphrase source is empty", code="bad-passphrase")
    key = generate_key(Algorithm(algorithm))
    public = save_keypair(out, key, passphrase)
    click.echo(f"{key_id(key.public_key())}  {out}  {public}")


command = keygen
