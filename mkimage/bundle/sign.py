"""`mkspawn sign`: add signatures to an existing bundle.

The manifest bytes are kept exactly; only signature members change, so a bundle
signed by several parties (CI, then a release key) stays byte-identical elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from mkimage.bundle.build import make_signature
from mkimage.bundle.container import iter_component, write_bundle
from mkimage.bundle.manifest import Signature
from mkimage.bundle.verify import opened_bundle
from mkimage.outputs import atomic_output
from mkimage.signing.keys import PrivateKey


def sign_bundle(path: Path, out: Path, signers: Sequence[PrivateKey]) -> None:
    with opened_bundle(path) as (f, contents):
        by_keyid: dict[str, bytes] = {sig.keyid: raw for raw, sig in contents.signatures}
        for key in signers:
            raw = make_signature(key, contents.manifest_bytes)
            by_keyid[Signature.from_bytes(raw).keyid] = raw
        components = [
            (c.path, functools.partial(iter_component, f, contents, c.path))
            for c in contents.manifest.components
        ]
        with atomic_output(out) as dest:
            write_bundle(dest, contents.manifest_bytes, list(by_keyid.values()), components,
                         contents.manifest.provenance.source_date_epoch)
