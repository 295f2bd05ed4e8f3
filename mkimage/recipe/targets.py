"""What a spawn targets: its architecture and its loader's ABI profile.

Kept apart from ``model`` (which re-exports both) so that reading a bundle, whose
manifest names these two, does not build the whole recipe model's dataclasses.
"""

from __future__ import annotations

import enum


class Arch(enum.StrEnum):
    X86_64 = "x86_64"
    ARM64 = "arm64"


class AbiProfile(enum.StrEnum):
    """Which multikernel loader generation the spawn targets (multikernel-abi.md §2)."""

    NONE = "none"  # plain kexec_file_load target, no multikernel host
    V2 = "v2"
    MK2 = "mk2"
    MK_MASTER = "mk-master"
