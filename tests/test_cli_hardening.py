"""The CLI on hostile or odd inputs and under signals: one line, the documented status,
nothing left behind, never a hang or a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkimage.errors import ExitCode
from tests.bundle.forge import KEYS, signing_key, write_signed, write_sparse
from tests.conftest import missing
from tests.conftest import run_mkspawn as mkspawn


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mkspawn: error: ")
    return lines[0]


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_signed(tmp_path / "ok.mkb")


# ---- item 1: a state file with versions that are not versions ------------------------

@pytest.mark.parametrize("recorded", ["abc", "01.1.0", ""])
def test_state_with_a_bad_recorded_version(tmp_path: Path, bundle: Path, trust: Path, recorded: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"_type": "mkspawn-rollback-state", "recipes": {"forged": recorded}}))
    line = one_line(mkspawn("verify", bundle, "--trust", trust, "--state", state), ExitCode.USAGE)
    assert str(state) in line and line.endswith("[bad-state]")
    assert repr(recorded) in line


# ---- item 2: a state file that cannot be written -------------------------------------

def test_state_under_a_regular_file_is_refused_before_verifying(tmp_path: Path, trust: Path) -> None:
    """Root ignores mode bits, but not a path whose parent is a file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    state = blocker / "state.json"
    unsigned = write_signed(tmp_path / "unsigned.mkb", keys=[])
    # Refused for the state before the (unsigned, exit 3) bundle is even looked at.
    line = one_line(mkspawn("verify", unsigned, "--trust", trust, "--state", state), ExitCode.USAGE)
    assert str(state) in line and line.endswith("[state-not-writable]")


def _chattr(flag: str, path: Path) -> None:
    if shutil.which("chattr") is None:
        missing("chattr is not installed (e2fsprogs)")
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"chattr {flag} needs CAP_LINUX_IMMUTABLE: {done.stderr.strip()}")


def test_immutable_state_file_fails_after_verifying_with_one_line(tmp_path: Path, bundle: Path,
                                                                   trust: Path) -> None:
    """The probe passes (the directory is writable); only the final rename fails."""
    state = tmp_path / "state.json"
    before = json.dumps({"_type": "mkspawn-rollback-state", "recipes": {"forged": "0.9"}})
    state.write_text(before)
    _chattr("+i", state)
    try:
        line = one_line(mkspawn("verify", bundle, "--trust", trust, "--state", state), ExitCode.USAGE)
    finally:
        _chattr("-i", state)
    assert str(state) in line and line.endswith("[state-not-writable]")
    assert state.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state.json")] == []


def test_immutable_state_directory_is_refused_before_verifying(tmp_path: Path, trust: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    unsigned = write_signed(tmp_path / "unsigned.mkb", keys=[])
    _chattr("+i", state_dir)
    try:
        line = one_line(mkspawn("verify", unsigned, "--trust", trust, "--state", state_dir / "s.json"),
                        ExitCode.USAGE)
    finally:
        _chattr("-i", state_dir)
    assert line.endswith("[state-not-writable]")


def test_state_that_is_a_directory(tmp_path: Path, bundle: Path, trust: Path) -> None:
    line = one_line(mkspawn("verify", bundle, "--trust", trust, "--state", tmp_path), ExitCode.USAGE)
    assert "is a directory" in line and line.endswith("[not-a-regular-file]")


def test_state_in_a_missing_directory_is_created(tmp_path: Path, bundle: Path, trust: Path) -> None:
    state = tmp_path / "new" / "dir" / "state.json"
    done = mkspawn("verify", bundle, "--trust", trust, "--state", state)
    assert done.returncode == 0, done.stderr
    assert json.loads(state.read_text())["recipes"] == {"forged": "1.0"}


# ---- items 3 and 4: bundle paths that are not regular files --------------------------

def test_fifo_without_a_writer_is_refused_not_waited_on(tmp_path: Path, trust: Path) -> None:
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    for args in (("verify", fifo, "--trust", trust), ("inspect", fifo), ("check", "--static", fifo)):
        line = one_line(mkspawn(*args, timeout_s=30), ExitCode.USAGE)
        assert "FIFO" in line and line.endswith("[not-a-regular-file]")


def test_pipe_on_stdin_is_refused(trust: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "XDG_CONFIG_HOME": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "mkimage", "verify", "/dev/stdin", "--trust", str(trust)],
                          input="not a bundle", capture_output=True, text=True, env=env, timeout=30)
    assert "[not-a-regular-file]" in one_line(done, ExitCode.USAGE)


def test_proc_file_is_refused(trust: Path) -> None:
    line = one_line(mkspawn("verify", "/proc/self/status", "--trust", trust), ExitCode.USAGE)
    assert "not seekable" in line


@pytest.mark.parametrize("verb", ["verify", "inspect", "sign", "load", "check"])
def test_directory_as_bundle_is_one_line(tmp_path: Path, trust: Path, verb: str) -> None:
    extra = {"sign": ["--key", str(KEYS / "test-ed25519.pem")], "verify": ["--trust", str(trust)],
             "load": ["--trust", str(trust)], "check": ["--trust", str(trust)]}.get(verb, [])
    line = one_line(mkspawn(verb, tmp_path, *extra), ExitCode.USAGE)
    # verify, inspect, load and check also take a system directory, so an empty one is refused as that.
    system_verbs = ("verify", "inspect", "load", "check")
    expected = "no system.json: not a system directory" if verb in system_verbs else "bundle is a directory"
    assert f"{tmp_path}: {expected}" in line


def test_click_usage_errors_are_one_line() -> None:
    line = one_line(mkspawn("verify", "--no-such-option"), ExitCode.USAGE)
    assert line == "mkspawn: error: verify: No such option '--no-such-option'. [usage]"
    bare = mkspawn()  # no verb: the help is the answer
    assert bare.returncode == ExitCode.USAGE and bare.stderr.startswith("Usage: mkspawn")


# ---- item 11: sign refuses to carry an invalid signature forward ---------------------

def test_sign_refuses_a_bundle_with_an_invalid_signature(tmp_path: Path, trust: Path) -> None:
    bundle = write_signed(tmp_path / "b.mkb")
    data = bundle.read_bytes()
    # Same length, different recipe version: the manifest no longer matches its signature.
    assert data.count(b'"recipe_version":"1.0"') == 1
    bundle.write_bytes(data.replace(b'"recipe_version":"1.0"', b'"recipe_version":"9.0"'))
    out = tmp_path / "resigned.mkb"
    line = one_line(mkspawn("sign", bundle, "--key", KEYS / "other-ed25519.pem", "-o", out, "--trust", trust),
                    ExitCode.VERIFY_REJECTED)
    assert line.endswith("[bad-signature]") and not out.exists()
    # The signer's own key is known without a trust store: its stale signature is caught too.
    line = one_line(mkspawn("sign", bundle, "--key", KEYS / "test-ed25519.pem", "-o", out),
                    ExitCode.VERIFY_REJECTED)
    assert line.endswith("[bad-signature]") and not out.exists()


def test_sign_keeps_untrusted_signatures(tmp_path: Path, trust: Path) -> None:
    bundle = write_signed(tmp_path / "b.mkb", keys=[signing_key("other-ed25519")])
    done = mkspawn("sign", bundle, "--key", KEYS / "test-ed25519.pem", "--trust", trust)
    assert done.returncode == 0, done.stderr
    report = json.loads(mkspawn("verify", bundle, "--trust", trust, "--json").stdout)
    assert sorted(s["status"] for s in report["signatures"]) == ["trusted", "untrusted"]


# ---- item 14: a refusal under --json is a JSON object ---------------------------------

def test_verify_json_refusal_prints_json(tmp_path: Path, trust: Path) -> None:
    unsigned = write_signed(tmp_path / "unsigned.mkb", keys=[])
    done = mkspawn("verify", unsigned, "--trust", trust, "--json")
    assert one_line(done, ExitCode.VERIFY_REJECTED).endswith("[unsigned]")
    result = json.loads(done.stdout)
    assert result["ok"] is False
    assert result["error"]["code"] == "unsigned" and result["error"]["exit_code"] == ExitCode.VERIFY_REJECTED


def test_check_static_json_refusal_prints_one_json_object(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"neither bzImage nor ELF" * 100)
    done = mkspawn("check", "--static", junk, "--json")
    assert one_line(done, ExitCode.VERIFY_REJECTED).endswith("[contract-failed]")
    assert json.loads(done.stdout)["ok"] is False  # the report itself; exactly one object
    missing = mkspawn("check", "--static", tmp_path / "missing", "--json")
    assert json.loads(missing.stdout)["error"]["code"] == "no-such-file"


# ---- item 20: check verifies before it builds or boots anything -----------------------

def test_check_refuses_an_unsigned_bundle_before_the_host_kernel(tmp_path: Path, trust: Path) -> None:
    unsigned = write_signed(tmp_path / "unsigned.mkb", keys=[])
    # A host kernel that does not exist would fail with exit 2 if it were looked at first.
    done = mkspawn("check", unsigned, "--trust", trust, "--host-kernel", tmp_path / "no-host-kernel")
    assert one_line(done, ExitCode.VERIFY_REJECTED).endswith("[unsigned]")


# ---- item 5: signals -----------------------------------------------------------------

def _spawn(args: list[object], tmp_dir: Path) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "XDG_CONFIG_HOME": "/nonexistent",
           "TMPDIR": str(tmp_dir)}
    return subprocess.Popen([sys.executable, "-m", "mkimage", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(condition: object, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, ("finished before the signal", proc.communicate())
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.002)


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trusted bundle whose kernel is 1 GiB of zeros (a hole): verifying it takes seconds."""
    return write_sparse(tmp_path_factory.mktemp("big") / "big.mkb", 1 << 30, keys=[signing_key()], evidence=True)


def test_sigterm_while_signing_cleans_up(tmp_path: Path, big_bundle: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    proc = _spawn(["sign", big_bundle, "--key", KEYS / "other-ed25519.pem", "-o", out_dir / "signed.mkb"],
                  private_tmp)
    # The temp output has data: mid-copy.  (A signal inside mkstemp itself, before
    # atomic_output's try, would still leak the empty file: see the report.)
    _wait_for(lambda: any(p.stat().st_size for p in out_dir.iterdir()), proc, timeout_s=120)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert one_line(done, ExitCode.TERMINATED).endswith("[terminated]")
    assert list(out_dir.iterdir()) == [] and list(private_tmp.iterdir()) == []


def test_sigint_during_start_up_is_one_line(tmp_path: Path, big_bundle: Path, trust: Path) -> None:
    proc = _spawn(["verify", big_bundle, "--trust", trust], tmp_path)
    # The cryptography binding is loaded while the commands are being imported.
    _wait_for(lambda: "_rust.abi3.so" in _maps(proc.pid), proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert one_line(done, ExitCode.INTERRUPTED).endswith("[interrupted]")


def test_sigterm_while_verifying(tmp_path: Path, big_bundle: Path, trust: Path) -> None:
    proc = _spawn(["verify", big_bundle, "--trust", trust], tmp_path)
    _wait_for(lambda: _has_open(proc.pid, big_bundle), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert one_line(done, ExitCode.TERMINATED).endswith("[terminated]")


def _has_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process or one of its descriptors went away while we looked
        return False
