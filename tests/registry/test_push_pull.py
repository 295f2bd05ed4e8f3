"""push → pull through real registries and OCI layouts: byte-identical, deduplicated, verified."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import Registry


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def push(bundle: Path, ref: str, *args: object) -> dict[str, object]:
    done = mkspawn("push", bundle, ref, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_push_pull_round_trip_is_byte_identical(tmp_path: Path, plain_registry: Registry,
                                                bundles: dict[str, Path], trust: Path) -> None:
    ref = f"{plain_registry.host}/spawns/demo:1.0.0"
    pushed = push(bundles["demo"], ref, "--insecure")
    out = tmp_path / "pulled.mkb"
    done = mkspawn("pull", ref, "-o", out, "--trust", trust, "--insecure", "--json")
    assert done.returncode == 0, done.stderr
    pulled = json.loads(done.stdout)
    assert pulled["digest"] == pushed["digest"]
    assert out.read_bytes() == bundles["demo"].read_bytes()
    assert subprocess.run(["cmp", bundles["demo"], out]).returncode == 0
