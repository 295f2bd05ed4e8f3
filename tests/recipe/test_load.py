"""Recipe loading: extends, --set, path resolution, verbatim strings, show output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mkimage.errors import RecipeError
from mkimage.recipe.load import load_recipe, parse_override, recipe_to_dict
from mkimage.recipe.model import AbiProfile


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "base" / "bzImage", "k")
    write(tmp_path / "base" / "config", "CONFIG_X=y\n")
    write(tmp_path / "child" / "bzImage", "k2")
    write(tmp_path / "base" / "base.toml", """
[metadata]
name = "base"
version = "1.0"
[kernel]
image = "bzImage"
config = "config"
cmdline = "console=ttyS0"
[instance]
name = "app0"
id = 4
""")
    write(tmp_path / "child" / "spawn.toml", """
extends = "../base/base.toml"
[metadata]
name = "child"
version = "2.0.1"
[kernel]
image = "bzImage"
[instance]
profile = "v2"
""")
    return tmp_path


def test_extends_merges_tables_and_keeps_paths_relative_to_their_file(tree: Path) -> None:
    r = load_recipe(tree / "child" / "spawn.toml", env={})
    assert r.metadata.name == "child" and r.metadata.version == "2.0.1"
    assert r.kernel.image == tree / "child" / "bzImage"  # set by the child
    assert r.kernel.config == tree / "base" / "config"  # inherited, relative to the base
    assert r.kernel.cmdline == "console=ttyS0"
    assert (r.instance.name, r.instance.id, r.instance.profile) == ("app0", 4, AbiProfile.V2)


def test_set_overrides_after_extends_and_resolves_against_cwd(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "base")
    r = load_recipe(tree / "child" / "spawn.toml",
                    ["kernel.image=bzImage", "instance.id=9", "kernel.cmdline=a=b;c#d"], env={})
    assert r.kernel.image == tree / "base" / "bzImage"
    assert r.instance.id == 9
    assert r.kernel.cmdline == "a=b;c#d"


def test_strings_keep_semicolon_and_hash(tree: Path) -> None:
    recipe = write(tree / "uri.toml", """
[metadata]
name = "u"
version = "1"
[kernel]
image = "base/bzImage"
cmdline = "pkcs11:token=a;object=b#frag x=1 # not a comment"  # a comment
""")
    assert load_recipe(recipe, env={}).kernel.cmdline == "pkcs11:token=a;object=b#frag x=1 # not a comment"


def test_source_date_epoch_precedence(tree: Path) -> None:
    recipe = tree / "child" / "spawn.toml"
    assert load_recipe(recipe, env={}).metadata.source_date_epoch == 0
    assert load_recipe(recipe, env={"SOURCE_DATE_EPOCH": "1700000000"}).metadata.source_date_epoch == 1700000000
    pinned = load_recipe(recipe, ["metadata.source_date_epoch=5"], env={"SOURCE_DATE_EPOCH": "7"})
    assert pinned.metadata.source_date_epoch == 5
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe, env={"SOURCE_DATE_EPOCH": "soon"})
    assert e.value.render().startswith("$SOURCE_DATE_EPOCH: expected an integer")


@pytest.mark.parametrize(("text", "path", "value"), [
    ("instance.id=3", ("instance", "id"), 3),
    ("initramfs.busybox=true", ("initramfs", "busybox"), True),
    ('kernel.fragments=["a.config", "b"]', ("kernel", "fragments"), ["a.config", "b"]),
    ("kernel.cmdline=console=ttyS0 quiet", ("kernel", "cmdline"), "console=ttyS0 quiet"),
    ('kernel.cmdline="quoted"', ("kernel", "cmdline"), "quoted"),
])
def test_parse_override(text: str, path: tuple[str, ...], value: object) -> None:
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["noequals", "=v", "a..b=1"])
def test_bad_override(text: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse_override(text)
    assert e.value.render().startswith(f"--set {text}: ")


def test_override_error_names_the_option(tree: Path) -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(tree / "child" / "spawn.toml", ["instance.idd=3"], env={})
    assert e.value.render() == (
        "--set instance.idd=3: [instance] idd: unknown key 'idd'; did you mean 'id'? [unknown-key]"
    )


def test_show_json_round_trips_the_resolved_recipe(tree: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkimage", "recipe", "show", "--json",
                           str(tree / "child" / "spawn.toml")], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})
    data = json.loads(done.stdout)
    assert data == json.loads(json.dumps(recipe_to_dict(load_recipe(tree / "child" / "spawn.toml", env={}))))
    assert data["kernel"]["config"] == str(tree / "base" / "config")


def test_show_toml_output_loads_back(tree: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkimage", "recipe", "show", str(tree / "child" / "spawn.toml")],
                          capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    again = write(tree / "again.toml", done.stdout)
    original = load_recipe(tree / "child" / "spawn.toml", env={})
    assert recipe_to_dict(load_recipe(again, env={})) == recipe_to_dict(original)


# ---- permission bits: TOML keeps no radix, so `mode = 755` must not become 0o1363 ------

MODE_RECIPE = """
[metadata]
name = "m"
version = "1"
[kernel]
image = "base/bzImage"
[[initramfs.nodes]]
path = "/run/p"
type = "p"
mode = {mode}
"""


@pytest.mark.parametrize(("literal", "bits"), [
    ("0o644", 0o644), ("0o777", 0o777), ("0o4755", 0o4755), ("0o640", 0o640),  # decimal digits all octal
    ("0x1ed", 0o755), ("0b111101101", 0o755), ("7", 7), ("0", 0),
    ('"0644"', 0o644), ('"755"', 0o755), ("'0o600'", 0o600),
])
def test_octal_modes_are_taken(tree: Path, literal: str, bits: int) -> None:
    recipe = write(tree / "mode.toml", MODE_RECIPE.format(mode=literal))
    assert load_recipe(recipe, env={}).initramfs.nodes[0].mode == bits


@pytest.mark.parametrize("literal", ["755", "420", "1_0", "+644", "493"])
def test_decimal_modes_above_seven_are_refused(tree: Path, literal: str) -> None:
    recipe = write(tree / "mode.toml", MODE_RECIPE.format(mode=literal))
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe, env={})
    assert e.value.render().startswith(f"{recipe}:10: [initramfs] nodes[0].mode: ")
    assert "is a decimal integer" in e.value.message and e.value.code == "bad-value"


def test_a_decimal_mode_from_set_is_refused(tree: Path) -> None:
    recipe = write(tree / "mode.toml", MODE_RECIPE.format(mode="0o600"))
    override = 'initramfs.nodes=[{ path = "/run/q", type = "p", mode = 640 }]'
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe, [override], env={})
    assert e.value.render() == (f"--set {override}: [initramfs] nodes[0].mode: 640 is a decimal integer (0o1200); "
                                'write permission bits in octal, 0o640 or "0640" [bad-value]')


def test_show_writes_modes_in_octal_so_they_load_back(tree: Path) -> None:
    recipe = write(tree / "mode.toml", MODE_RECIPE.format(mode="0o644"))
    done = subprocess.run([sys.executable, "-m", "mkimage", "recipe", "show", str(recipe)],
                          capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert 'nodes = [{ "path" = "/run/p", "type" = "p", "mode" = 0o644 }]' in done.stdout
    again = write(tree / "again.toml", done.stdout)
    assert load_recipe(again, env={}).initramfs.nodes[0].mode == 0o644


def test_a_missing_absolute_path_is_shown_as_written(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "child")
    recipe = write(tree / "abs.toml", '[metadata]\nname = "a"\nversion = "1"\n[kernel]\nimage = "/nonexistent/bz"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe, env={})
    assert e.value.message == "no such file: /nonexistent/bz"
