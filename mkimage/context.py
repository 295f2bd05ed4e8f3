"""Where mkspawn keeps its state on the build machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The content-addressed cache (kernel sources and builds, ccache, test assets).

    A stable path, so reruns on one machine reuse builds and ccache hits survive.
    """
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "mkspawn"
