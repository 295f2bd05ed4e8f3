"""Credential helpers (``credsStore``, ``credHelpers``) against the real htpasswd registry.

The helper is a small executable written here that speaks the docker-credential-helpers
protocol (``get``, the registry on stdin, ``{"Username", "Secret"}`` on stdout, the
"credentials not found" message and a non-zero status otherwise): it stands in for a
keychain this machine does not have, while the registry that checks what it hands out
is real."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, Registry
from tests.registry.test_push_pull import one_error_line
from tests.registry.test_refusals import assert_nothing_written

HELPER = """\
#!{python}
import json, pathlib, sys, time
here = pathlib.Path(__file__).parent
behaviour = json.loads((here / "{name}.json").read_text())
server = sys.stdin.read()
with (here / "{name}.calls").open("a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "stdin": server}}) + "\\n")
time.sleep(behaviour.get("sleep_s", 0))
if "print" in behaviour:
    print(behaviour["print"])
    sys.exit(behaviour.get("status", 0))
entry = behaviour.get("hosts", {{}}).get(server)
if entry is None:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, **entry}}))
"""


def write_helper(bin_dir: Path, name: str, behaviour: dict[str, object]) -> Path:
    """``docker-credential-NAME`` in ``bin_dir``, answering as ``behaviour`` says; its
    calls are appended to ``NAME.calls``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / f"{name}.json").write_text(json.dumps(behaviour))
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(HELPER.format(python=sys.executable, name=name))
    path.chmod(0o755)
    return bin_dir / f"{name}.calls"


def calls(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def setup(tmp_path: Path, config: dict[str, object]) -> dict[str, str]:
    """A docker config holding ``config`` and an environment that finds it and the helpers."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps(config))
    return {"HOME": str(home), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def good(registry: Registry) -> dict[str, object]:
    return {"hosts": {registry.host: {"Username": USER, "Secret": PASSWORD}}}


def wrong_auth(registry: Registry) -> dict[str, object]:
    return {registry.host: {"auth": base64.b64encode(f"{USER}:not-the-password".encode()).decode()}}


def test_creds_store_helper_serves_push_and_pull(tmp_path: Path, tls_registry: Registry,
                                                 bundles: dict[str, Path], trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    log = write_helper(tmp_path / "bin", "keyring", good(tls_registry))
    # docker writes an empty auths entry beside a credsStore: the helper holds the secret.
    env = setup(tmp_path, {"credsStore": "keyring", "auths": {tls_registry.host: {}}})
    ref = f"{tls_registry.host}/helpers/demo:1"
    done = mkspawn("-v", "--debug", "push", bundles["demo"], ref, "--ca-cert", tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "pulled.mkb"
    pulled = mkspawn("-v", "--debug", "pull", ref, "-o", out, "--trust", trust, "--ca-cert", tls_registry.ca_cert,
                     env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == bundles["demo"].read_bytes()
    for run in (done, pulled):
        assert PASSWORD not in run.stdout + run.stderr
    # The protocol: `get` as the only argument, the registry on stdin (never in argv).
    seen = calls(log)
    assert seen and all(c == {"argv": ["get"], "stdin": tls_registry.host} for c in seen)


def test_cred_helpers_entry_wins_over_creds_store_and_auths(tmp_path: Path, tls_registry: Registry,
                                                            bundles: dict[str, Path], trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    log = write_helper(tmp_path / "bin", "per-registry", good(tls_registry))
    broken = write_helper(tmp_path / "bin", "everything", {"print": "store is locked", "status": 1})
    env = setup(tmp_path, {"credHelpers": {tls_registry.host: "per-registry"}, "credsStore": "everything",
                           "auths": wrong_auth(tls_registry)})
    out = tmp_path / "pulled.mkb"
    done = mkspawn("push", bundles["demo"], f"{tls_registry.host}/helpers/demo:2", "--ca-cert",
                   tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    done = mkspawn("pull", f"{tls_registry.host}/helpers/demo:2", "-o", out, "--trust", trust, "--ca-cert",
                   tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    assert calls(log) and not calls(broken)


def test_creds_store_wins_over_auths(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path]) -> None:
    assert tls_registry.ca_cert is not None
    write_helper(tmp_path / "bin", "keyring", good(tls_registry))
    env = setup(tmp_path, {"credsStore": "keyring", "auths": wrong_auth(tls_registry)})
    done = mkspawn("push", bundles["demo"], f"{tls_registry.host}/helpers/demo:3", "--ca-cert",
                   tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr


def test_a_missing_helper_is_one_line(tmp_path: Path, tls_registry: Registry, trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    env = setup(tmp_path, {"credsStore": "nowhere", "auths": wrong_auth(tls_registry)})
    out = tmp_path / "pulled.mkb"
    line = one_error_line(mkspawn("pull", f"{tls_registry.host}/helpers/demo:1", "-o", out, "--trust", trust,
                                  "--ca-cert", tls_registry.ca_cert, env=env), 2)
    assert line == (f"mkspawn: error: {tls_registry.host}: credential helper docker-credential-nowhere named by "
                    f"credsStore in {env['HOME']}/.docker/config.json is not on PATH [credential-helper-missing]")
    assert_nothing_written(out)


def test_a_failing_helper_is_one_line(tmp_path: Path, tls_registry: Registry, trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    write_helper(tmp_path / "bin", "locked", {"print": "gpg: decryption failed: No secret key", "status": 1})
    env = setup(tmp_path, {"credHelpers": {tls_registry.host: "locked"}})
    out = tmp_path / "pulled.mkb"
    line = one_error_line(mkspawn("pull", f"{tls_registry.host}/helpers/demo:1", "-o", out, "--trust", trust,
                                  "--ca-cert", tls_registry.ca_cert, env=env), 1)
    assert line.startswith(f"mkspawn: error: {tls_registry.host}: credential helper docker-credential-locked "
                           f"(credHelpers in {env['HOME']}/.docker/config.json) failed (status 1): gpg: decryption")
    assert line.endswith("[credential-helper-failed]")
    assert_nothing_written(out)


def test_a_helper_without_credentials_for_the_registry_means_none(tmp_path: Path, tls_registry: Registry,
                                                                   trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    write_helper(tmp_path / "bin", "keyring", {"hosts": {"elsewhere.example": {"Username": "u", "Secret": "s"}}})
    env = setup(tmp_path, {"credsStore": "keyring"})
    out = tmp_path / "pulled.mkb"
    line = one_error_line(mkspawn("pull", f"{tls_registry.host}/helpers/demo:1", "-o", out, "--trust", trust,
                                  "--ca-cert", tls_registry.ca_cert, env=env), 1)
    assert "requires credentials and there are none" in line and line.endswith("[registry-auth-failed]")


def test_a_helper_that_hangs_is_cut_off(tmp_path: Path, tls_registry: Registry, trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    write_helper(tmp_path / "bin", "slow", {**good(tls_registry), "sleep_s": 60})
    env = setup(tmp_path, {"credsStore": "slow"})
    out = tmp_path / "pulled.mkb"
    done = mkspawn("pull", f"{tls_registry.host}/helpers/demo:1", "-o", out, "--trust", trust, "--ca-cert",
                   tls_registry.ca_cert, "--timeout", "2", env=env, timeout_s=30)
    line = one_error_line(done, 1)
    assert line.endswith("did not answer within 2s [credential-helper-failed]"), line
    assert_nothing_written(out)


def test_helper_output_that_is_not_the_protocol_is_not_echoed(tmp_path: Path, tls_registry: Registry,
                                                             trust: Path) -> None:
    """A helper that prints its secret bare (not the JSON) fails without the secret
    reaching the terminal, even under --debug."""
    assert tls_registry.ca_cert is not None
    write_helper(tmp_path / "bin", "raw", {"print": f"{USER}:{PASSWORD}"})
    env = setup(tmp_path, {"credsStore": "raw"})
    out = tmp_path / "pulled.mkb"
    args = ("pull", f"{tls_registry.host}/helpers/demo:1", "-o", out, "--trust", trust, "--ca-cert",
            tls_registry.ca_cert)
    line = one_error_line(mkspawn(*args, env=env), 1)
    assert line.endswith('printed no {"Username", "Secret"} JSON [credential-helper-failed]'), line
    done = mkspawn("-v", "--debug", *args, env=env)
    assert done.returncode == 1 and PASSWORD not in done.stdout + done.stderr
