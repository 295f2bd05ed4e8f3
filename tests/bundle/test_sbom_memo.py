"""A rebuild takes the SBOM and the dpkg answers from the cache (issue 15) and writes the
same bundle, byte for byte, as a build that made them; other facts make another SBOM."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import pytest

from mkimage.bundle.sbom import SBOM_MEMBER, SbomFacts, SbomInput, SbomMember
from mkimage.cachecare import scan
from mkimage.evidence import sbom_key
from tests.bundle.evidence_helpers import build, member
from tests.bundle.forge import signing_key


def _runs(caplog: pytest.LogCaptureFixture, tool: str) -> int:
    commands = [r.getMessage().split() for r in caplog.records if r.getMessage().startswith("$ ")]
    caplog.clear()
    return sum(Path(argv[1]).name == tool for argv in commands)


def test_a_cached_rebuild_is_byte_identical(tmp_path: Path, synthetic_kernel: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    out = {}
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        out["miss"] = build(tmp_path / "r", synthetic_kernel, tmp_path / "miss.mkb", [signing_key()],
                            cache_root=cache).path.read_bytes()
        assert _runs(caplog, "dpkg-query") == 2
        out["hit"] = build(tmp_path / "r", synthetic_kernel, tmp_path / "hit.mkb", [signing_key()],
                           cache_root=cache).path.read_bytes()
        assert _runs(caplog, "dpkg-query") == 0
    out["uncached"] = build(tmp_path / "r", synthetic_kernel, tmp_path / "fresh.mkb", [signing_key()],
                            cache_root=tmp_path / "fresh").path.read_bytes()
    assert len(list((cache / "sbom").iterdir())) == 1
    assert out["miss"] == out["hit"] == out["uncached"]
    # `mkspawn cache status|prune` knows the new entries.
    assert {"sbom", "dpkg-memo"} <= {e.kind for e in scan(cache)}


def test_other_facts_are_never_answered_with_a_cached_sbom(tmp_path: Path, synthetic_kernel: Path) -> None:
    cache = tmp_path / "cache"
    first = build(tmp_path / "r", synthetic_kernel, tmp_path / "1.mkb", cache_root=cache).path
    other = ["metadata.version=2.0.0"]
    cached = build(tmp_path / "r", synthetic_kernel, tmp_path / "2.mkb", overrides=other, cache_root=cache).path
    fresh = build(tmp_path / "r", synthetic_kernel, tmp_path / "3.mkb", overrides=other,
                  cache_root=tmp_path / "fresh").path
    assert member(cached, SBOM_MEMBER) != member(first, SBOM_MEMBER)
    assert member(cached, SBOM_MEMBER) == member(fresh, SBOM_MEMBER)
    assert len(list((cache / "sbom").iterdir())) == 2


FACTS = SbomFacts(recipe_name="r", recipe_version="1", kernel_release="6.12.0", config_sha256="c" * 64,
                  source_date_epoch=1, mkspawn_version="0.1.0",
                  members=(SbomMember("kernel", "bzImage", "a" * 64, "application/x-bzimage"),),
                  inputs=(SbomInput("file", "/bin/busybox", "b" * 64, None),))


def test_the_key_covers_every_fact_and_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = sbom_key(FACTS)
    assert sbom_key(dataclasses.replace(FACTS, source_date_epoch=2)) != key
    assert sbom_key(dataclasses.replace(FACTS, inputs=(SbomInput("file", "/bin/busybox", "b" * 64, None),
                                                       SbomInput("file", "/bin/sh", "b" * 64, None)))) != key
    sbom = sys.modules["mkimage.bundle.sbom"]
    edited = tmp_path / "sbom.py"
    edited.write_text(Path(str(sbom.__file__)).read_text() + "\n# edited\n")
    monkeypatch.setattr(sbom, "__file__", str(edited))
    assert sbom_key(FACTS) != key
