"""The handover stage: the recipe's instance, cmdline and the bundle's image digests as
``handover.dtb``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mkimage.artifacts import Artifact, Role
from mkimage.devicetree.schema import resolve_instance
from mkimage.handover.binding import Handover, HandoverInstance, encode_handover
from mkimage.outputs import write_atomic
from mkimage.recipe.model import AbiProfile, Recipe

MEMBER = "handover.dtb"
MEDIA_TYPE = "application/x-dtb"


def spawn_cmdline(recipe: Recipe) -> str:
    """The spawn's full command line: [kernel] cmdline, then the instance's additions."""
    return " ".join(part for part in (recipe.kernel.cmdline, recipe.instance.cmdline) if part)


def handover_record(recipe: Recipe, digests: Mapping[str, str]) -> Handover | None:
    """None for a recipe that targets no multikernel host (profile "none")."""
    spec = recipe.instance
    if spec.profile is AbiProfile.NONE:
        return None
    assert spec.name is not None and spec.id is not None  # the loader insists on both
    placed = resolve_instance(recipe)
    instance = HandoverInstance(
        name=spec.name,
        id=spec.id,
        cpus=placed.cpus if placed else (),
        memory_bytes=spec.memory_bytes,
        numa_nodes=tuple(spec.numa_nodes),
    )
    return Handover(
        profile=spec.profile,
        cmdline=spawn_cmdline(recipe),
        digests=dict(digests),
        instance=instance,
        preserve=tuple((item.name, item.size_bytes) for item in spec.preserve),
    )


def build_handover(recipe: Recipe, work_dir: Path, digests: Mapping[str, str]) -> list[Artifact]:
    """Write ``work_dir/handover.dtb``; ``digests`` maps bundle roles ("kernel",
    "initrd", …) to sha256 hex.  [] for profile "none"."""
    record = handover_record(recipe, digests)
    if record is None:
        return []
    path = work_dir / MEMBER
    write_atomic(path, encode_handover(record))
    return [Artifact(Role.HANDOVER, MEMBER, path, MEDIA_TYPE)]
