"""Manifest and signature documents: strict from_dict, exact to_dict, checked invariants."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.bundle.canon import canonical_json
from mkimage.bundle.manifest import (
    AbiProfile,
    Arch,
    Component,
    Input,
    InputKind,
    Manifest,
    Provenance,
    Role,
    Signature,
    SignatureScheme,
    version_key,
)
from mkimage.errors import FormatError

H1 = "1" * 64
H2 = "ab" * 32


def valid_manifest() -> dict[str, Any]:
    return {
        "_type": "mkspawn-manifest",
        "format_version": 1,
        "recipe_name": "min-x86",
        "recipe_version": "1.2.3",
        "arch": "x86_64",
        "abi_profile": "mk2",
        "kernel_release": "6.12.3-mk+",
        "components": [
            {"role": "kernel", "path": "boot/bzImage", "size": 10, "sha256": H1,
             "media_type": "application/x-linux-bzimage"},
            {"role": "initrd", "path": "boot/initrd.cpio.zst", "size": 0, "sha256": H2,
             "media_type": "application/zstd"},
        ],
        "provenance": {
            "source_date_epoch": 1700000000,
            "mkspawn_version": "0.1.0",
            "tools": {"gcc": "13.2.0", "binutils": "2.41"},
            "inputs": [
                {"kind": "source", "name": "linux-6.12.3.tar.xz", "sha256": H1},
                {"kind": "patch", "name": "0001-mk.patch", "sha256": H2},
            ],
            "config_sha256": H2,
        },
    }


def valid_signature() -> dict[str, Any]:
    return {"_type": "mkspawn-signature", "keyid": H1, "scheme": "ed25519", "sig": "00ff" * 32}


Edit = Callable[[dict[str, Any]], None]


def edited(base: dict[str, Any], edit: Edit) -> dict[str, Any]:
    data = copy.deepcopy(base)
    edit(data)
    return data


def set_path(path: str, value: object) -> Edit:
    """An edit setting a dotted path; list indices are numbers ("components.0.size")."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def delete(path: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return edit


VALID_MANIFESTS: dict[str, Edit] = {
    "full": lambda d: None,
    "no-config": set_path("provenance.config_sha256", ""),
    "no-inputs-no-tools": lambda d: d["provenance"].update(inputs=[], tools={}),
    "no-components": set_path("components", []),
    "arm64-none": lambda d: d.update(arch="arm64", abi_profile="none"),
    "mk-master": set_path("abi_profile", "mk-master"),
    "single-number-version": set_path("recipe_version", "7"),
    "zero-version": set_path("recipe_version", "0.0.10"),
    "epoch-zero": set_path("provenance.source_date_epoch", 0),
    "epoch-max": set_path("provenance.source_date_epoch", 8589934591),
    "size-max": set_path("components.0.size", 8589934591),
    "unicode-tool": set_path("provenance.tools", {"gcc": "13.2 (Débian)"}),
    "every-role": lambda d: d.update(components=[
        {"role": r.value, "path": f"c/{r.value}", "size": 1, "sha256": H1,
         "media_type": "application/octet-stream"} for r in sorted(Role)
    ]),
    "media-type-suffix": set_path("components.0.media_type", "application/vnd.mk+json"),
}


@pytest.mark.parametrize("case", sorted(VALID_MANIFESTS))
def test_valid_manifest(case: str) -> None:
    data = edited(valid_manifest(), VALID_MANIFESTS[case])
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    encoded = canonical_json(data)
    assert manifest.to_bytes() == encoded
    assert Manifest.from_bytes(encoded) == manifest


def test_from_dict_does_not_mutate_its_argument() -> None:
    data = valid_manifest()
    Manifest.from_dict(data)
    assert data == valid_manifest()


# case: (edit, code, message fragment)
INVALID_MANIFESTS: dict[str, tuple[Edit, str, str]] = {
    "unknown-top-field": (set_path("comment", "x"), "unknown-field", "comment"),
    "unknown-component-field": (set_path("components.1.mode", 420), "unknown-field",
                                "components[1].mode"),
    "unknown-provenance-field": (set_path("provenance.host", "x"), "unknown-field",
                                 "provenance.host"),
    "unknown-input-field": (set_path("provenance.inputs.0.url", "x"), "unknown-field",
                            "provenance.inputs[0].url"),
    "missing-type": (delete("_type"), "missing-field", "_type"),
    "missing-size": (delete("components.0.size"), "missing-field", "components[0].size"),
    "missing-provenance": (delete("provenance"), "missing-field", "provenance"),
    "wrong-type-tag": (set_path("_type", "mkspawn-signature"), "bad-field",
                       "_type: observed 'mkspawn-signature', expected 'mkspawn-manifest'"),
    "format-version-2": (set_path("format_version", 2), "unknown-format-version",
                         "format_version: observed 2, expected 1"),
    "format-version-2-new-field": (lambda d: d.update(format_version=2, future=1),
                                   "unknown-format-version", "observed 2"),
    "format-version-string": (set_path("format_version", "1"), "bad-field",
                              "format_version: observed string, expected integer"),
    "format-version-bool": (set_path("format_version", True), "bad-field",
                            "observed boolean, expected integer"),
    "size-string": (set_path("components.0.size", "10"), "bad-field",
                    "components[0].size: observed string, expected integer"),
    "size-bool": (set_path("components.0.size", False), "bad-field",
                  "components[0].size: observed boolean"),
    "size-negative": (set_path("components.0.size", -1), "bad-field", "components[0].size"),
    "size-too-big": (set_path("components.0.size", 8589934592), "bad-field",
                     "components[0].size"),
    "sha256-upper": (set_path("components.0.sha256", "A" * 64), "bad-field",
                     "components[0].sha256"),
    "sha256-short": (set_path("components.1.sha256", "a" * 63), "bad-field",
                     "components[1].sha256"),
    "role-unknown": (set_path("components.0.role", "bootloader"), "bad-field",
                     "expected one of kernel, vmlinux"),
    "role-int": (set_path("components.0.role", 1), "bad-field",
                 "components[0].role: observed integer, expected string"),
    "media-type-upper": (set_path("components.0.media_type", "Application/X"), "bad-field",
                         "media_type"),
    "media-type-no-slash": (set_path("components.0.media_type", "binary"), "bad-field",
                            "media_type"),
    "path-manifest": (set_path("components.0.path", "manifest.json"), "bad-field", "reserved"),
    "path-signatures": (set_path("components.0.path", "signatures/x.sig"), "bad-field",
                        "reserved"),
    "path-absolute": (set_path("components.0.path", "/boot/bzImage"), "bad-field",
                      "absolute"),
    "path-traversal": (set_path("components.0.path", "boot/../../x"), "bad-field", ".."),
    "path-too-long": (set_path("components.0.path", "b" * 101), "bad-field", "100"),
    "components-unsorted": (lambda d: d["components"].reverse(), "bad-field",
                            "sorts after"),
    "components-duplicate": (lambda d: d["components"].append(d["components"][1]),
                             "bad-field", "appears twice"),
    "components-object": (set_path("components", {}), "bad-field",
                          "components: observed object, expected array"),
    "component-not-object": (set_path("components.0", "boot/bzImage"), "bad-field",
                             "components[0]: observed string, expected object"),
    "arch-unknown": (set_path("arch", "riscv64"), "bad-field", "arch"),
    "abi-unknown": (set_path("abi_profile", "mk3"), "bad-field", "abi_profile"),
    "recipe-name-leading-dot": (set_path("recipe_name", ".hidden"), "bad-field", "recipe_name"),
    "recipe-name-slash": (set_path("recipe_name", "a/b"), "bad-field", "recipe_name"),
    "version-leading-zero": (set_path("recipe_version", "1.02"), "bad-field", "recipe_version"),
    "version-empty-part": (set_path("recipe_version", "1..2"), "bad-field", "recipe_version"),
    "version-prefix": (set_path("recipe_version", "v1"), "bad-field", "recipe_version"),
    "release-space": (set_path("kernel_release", "6.12 mk"), "bad-field", "kernel_release"),
    "release-empty": (set_path("kernel_release", ""), "bad-field", "kernel_release"),
    "release-too-long": (set_path("kernel_release", "6" * 65), "bad-field", "kernel_release"),
    "epoch-negative": (set_path("provenance.source_date_epoch", -1), "bad-field",
                       "provenance.source_date_epoch"),
    "epoch-too-big": (set_path("provenance.source_date_epoch", 8589934592), "bad-field",
                      "provenance.source_date_epoch"),
    "version-empty": (set_path("provenance.mkspawn_version", ""), "bad-field",
                      "provenance.mkspawn_version"),
    "tools-list": (set_path("provenance.tools", ["gcc"]), "bad-field",
                   "provenance.tools: observed array, expected object"),
    "tool-version-int": (set_path("provenance.tools", {"gcc": 13}), "bad-field",
                         "provenance.tools.gcc: observed integer, expected string"),
    "input-kind": (set_path("provenance.inputs.1.kind", "url"), "bad-field",
                   "provenance.inputs[1].kind"),
    "input-sha": (set_path("provenance.inputs.0.sha256", ""), "bad-field",
                  "provenance.inputs[0].sha256"),
    "input-name-empty": (set_path("provenance.inputs.0.name", ""), "bad-field",
                         "provenance.inputs[0].name"),
    "inputs-object": (set_path("provenance.inputs", {}), "bad-field", "provenance.inputs"),
    "config-sha-upper": (set_path("provenance.config_sha256", "F" * 64), "bad-field",
                         "provenance.config_sha256"),
    "provenance-array": (set_path("provenance", []), "bad-field", "provenance"),
}


@pytest.mark.parametrize("case", sorted(INVALID_MANIFESTS))
def test_invalid_manifest(case: str) -> None:
    edit, code, fragment = INVALID_MANIFESTS[case]
    data = edited(valid_manifest(), edit)
    with pytest.raises(FormatError) as info:
        Manifest.from_dict(data)
    assert info.value.code == code, info.value.message
    assert fragment in info.value.message
    # The same document as bytes fails the same way.
    with pytest.raises(FormatError) as again:
        Manifest.from_bytes(canonical_json(data))
    assert again.value.code == code


def test_from_bytes_requires_canonical_bytes() -> None:
    pretty = canonical_json(valid_manifest()).replace(b",", b", ")
    with pytest.raises(FormatError) as info:
        Manifest.from_bytes(pretty)
    assert info.value.code == "non-canonical-json"


# --- signatures --------------------------------------------------------------------------


def test_valid_signature() -> None:
    data = valid_signature()
    sig = Signature.from_dict(data)
    assert sig.to_dict() == data
    assert sig.member_name == f"signatures/{H1}.sig"
    assert sig.sig_bytes == b"\x00\xff" * 32
    assert Signature.from_bytes(sig.to_bytes()) == sig
    assert sig.scheme is SignatureScheme.ED25519


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_every_scheme(scheme: SignatureScheme) -> None:
    data = edited(valid_signature(), set_path("scheme", scheme.value))
    assert Signature.from_dict(data).scheme is scheme


INVALID_SIGNATURES: dict[str, tuple[Edit, str, str]] = {
    "keyid-upper": (set_path("keyid", "A" * 64), "bad-field", "keyid"),
    "keyid-short": (set_path("keyid", "a"), "bad-field", "keyid"),
    "scheme-unknown": (set_path("scheme", "ed448"), "bad-field", "scheme"),
    "sig-odd": (set_path("sig", "abc"), "bad-field", "sig"),
    "sig-upper": (set_path("sig", "AB"), "bad-field", "sig"),
    "sig-empty": (set_path("sig", ""), "bad-field", "sig"),
    "sig-int": (set_path("sig", 12), "bad-field", "sig: observed integer"),
    "wrong-type-tag": (set_path("_type", "mkspawn-manifest"), "bad-field", "_type"),
    "unknown-field": (set_path("signed_at", 1), "unknown-field", "signed_at"),
    "missing-sig": (delete("sig"), "missing-field", "sig"),
}


@pytest.mark.parametrize("case", sorted(INVALID_SIGNATURES))
def test_invalid_signature(case: str) -> None:
    edit, code, fragment = INVALID_SIGNATURES[case]
    with pytest.raises(FormatError) as info:
        Signature.from_dict(edited(valid_signature(), edit))
    assert info.value.code == code, info.value.message
    assert fragment in info.value.message


# --- constructors ------------------------------------------------------------------------


def provenance(**overrides: Any) -> Provenance:
    fields: dict[str, Any] = {
        "source_date_epoch": 1700000000, "mkspawn_version": "0.1.0", "tools": {},
        "inputs": (), "config_sha256": "",
    }
    fields.update(overrides)
    return Provenance(**fields)


def component(path: str) -> Component:
    return Component(role=Role.DTB, path=path, size=1, sha256=H1, media_type="application/x-dtb")


def test_build_sorts_components_by_byte_order() -> None:
    manifest = Manifest.build(
        recipe_name="r", recipe_version="1", arch=Arch.ARM64, abi_profile=AbiProfile.V2,
        kernel_release="6.12.3", components=[component("b"), component("B"), component("a/z")],
        provenance=provenance(),
    )
    assert [c.path for c in manifest.components] == ["B", "a/z", "b"]
    assert manifest.format_version == 1
    assert manifest.component("a/z") == component("a/z")
    assert manifest.component("nope") is None


def test_constructor_rejects_unsorted() -> None:
    with pytest.raises(ValueError, match="sorts after"):
        Manifest(
            format_version=1, recipe_name="r", recipe_version="1", arch=Arch.ARM64,
            abi_profile=AbiProfile.V2, kernel_release="6.12.3",
            components=(component("b"), component("a")), provenance=provenance(),
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda: component("../x"),
        lambda: Component(role=Role.KERNEL, path="k", size=-1, sha256=H1, media_type="a/b"),
        lambda: Input(kind=InputKind.FILE, name="", sha256=H1),
        lambda: provenance(config_sha256="x"),
        lambda: provenance(tools={"gcc": ""}),
        lambda: Signature(keyid=H1, scheme=SignatureScheme.ED25519, sig=""),
    ],
    ids=["path", "size", "input-name", "config", "tool-version", "sig"],
)
def test_constructor_invariants(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_constructor_normalises_enum_values() -> None:
    made = Component(
        role="kernel",  # type: ignore[arg-type]
        path="k", size=1, sha256=H1, media_type="a/b",
    )
    assert made.role is Role.KERNEL
    with pytest.raises(ValueError, match="role: observed 'bios'"):
        Component(
            role="bios",  # type: ignore[arg-type]
            path="k", size=1, sha256=H1, media_type="a/b",
        )


def test_provenance_tools_are_sorted_and_read_only() -> None:
    prov = provenance(tools={"ld": "2.41", "gcc": "13"})
    assert list(prov.tools) == ["gcc", "ld"]
    with pytest.raises(TypeError):
        prov.tools["gcc"] = "14"  # type: ignore[index]
    assert prov == provenance(tools={"gcc": "13", "ld": "2.41"})


@pytest.mark.parametrize(
    ("older", "newer"), [("1", "2"), ("1.9", "1.10"), ("1", "1.0"), ("0.9.9", "1"), ("2.0", "10")]
)
def test_version_key_orders_numerically(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)


@pytest.mark.parametrize("bad", ["", "1.", ".1", "01", "1.a", "1 .2", "-1", "1.2\n"])
def test_version_key_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        version_key(bad)


# --- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)

json_leaf = st.booleans() | st.integers(-3, 2**34) | st.text(max_size=70) | st.sampled_from(
    ["kernel", "x86_64", "mk2", "ed25519", H1, "a/b", "1.2", ""]
)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                   max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(sorted(set(valid_manifest()) | set(valid_manifest()["provenance"])
                                     | set(valid_manifest()["components"][0]) | {"x"}))


@FUZZ
@given(st.lists(st.tuples(field_names, json_any), max_size=4), st.booleans())
def test_fuzz_from_dict(replacements: list[tuple[str, Any]], nested: bool) -> None:
    data = valid_manifest()
    for key, value in replacements:
        target = data["provenance"] if nested else data
        target[key] = value
    for cls in (Manifest, Signature):
        try:
            cls.from_dict(data)
        except FormatError:
            pass


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_from_bytes(data: bytes) -> None:
    for cls in (Manifest, Signature):
        try:
            cls.from_bytes(data)
        except FormatError:
            pass
