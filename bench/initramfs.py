"""Benchmark mkspawn's newc writer against GNU cpio, the kernel's usr/gen_init_cpio and
`cat` of the bytes actually written, and its zstd compression against `zstd -T0`.

    python3 bench/initramfs.py [--large DIR] [--small DIR] [--repeat N] [--zstd-mib N]

Each packer runs in its own child process on the same host tree, read in place,
uncompressed, into /var/tmp; the page cache is warmed first and the best of N runs
counts.  Peak RSS is GNU time's %M for that child alone: a child exec'd straight from
this (larger) process would inherit its RSS high-water mark.  gen_init_cpio is built
from the linux-source-6.12 tarball into ~/.cache/mkspawn/bench/.  mkspawn and GNU cpio
store hard-linked data once, gen_init_cpio writes every name; the `cat` floor reads each
inode once, as the archives hold it.  Goals: ≤ 0.5× GNU cpio and ≤ 1.5× cat.

Compressed: the first --zstd-mib MiB of mkspawn's archive of the large tree go through
the initramfs stage's own zstd stream (multithreaded) and through `zstd -T0` at the same
level, both into /var/tmp.  Goal: ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mkimage.initramfs.compress import ZSTD_LEVEL  # noqa: E402 - after the sys.path line above

WORK = Path("/var/tmp/mkspawn-bench")
CACHE = Path.home() / ".cache" / "mkspawn" / "bench"
LINUX_SOURCE = Path("/usr/src/linux-source-6.12.tar.xz")
EPOCH = 1_700_000_000

MKSPAWN_CHILD = """
import sys
from pathlib import Path
from mkimage.initramfs.newc import write_archive
from mkimage.initramfs.userland import tree_entries
with open(sys.argv[2], "wb") as out:
    write_archive(tree_entries(Path(sys.argv[1]), "/", "bench", None), out, source_date_epoch=int(sys.argv[3]))
"""

ZSTD_CHILD = """
import sys
from mkimage.initramfs.compress import compressing
from mkimage.recipe.model import Compression
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as out, compressing(Compression.ZSTD, out) as z:
    while chunk := src.read(4 << 20):
        z.write(chunk)
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int
    size: int


RSS_FILE = WORK / "rss.txt"
TIME = ["/usr/bin/time", "-f", "%M", "-o", str(RSS_FILE)]  # Debian package "time"


def wait_child(proc: subprocess.Popen[bytes]) -> int:
    """Wait for one child run under TIME and return its peak RSS in KiB."""
    if proc.wait() != 0:
        raise SystemExit(f"{proc.args!r} failed with {proc.returncode}")
    return int(RSS_FILE.read_text().split()[-1])


def time_mkspawn(tree: Path, out: Path) -> Run:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen([*TIME, sys.executable, "-c", MKSPAWN_CHILD, str(tree), str(out), str(EPOCH)], env=env)
    rss = wait_child(proc)
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def stored_files(tree: Path) -> list[str]:
    """Every regular file once per inode, in name order: the data an archive holds."""
    seen: set[tuple[int, int]] = set()
    files = []
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                files.append(path)
    return sorted(files)


def time_cat(tree: Path, out: Path) -> Run:
    files = stored_files(tree)
    start = time.perf_counter()
    with open(out, "wb") as sink:
        rss = wait_child(subprocess.Popen([*TIME, "cat", *files], stdout=sink))
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def time_zstd_ours(plain: Path, out: Path) -> Run:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    rss = wait_child(subprocess.Popen([*TIME, sys.executable, "-c", ZSTD_CHILD, str(plain), str(out)], env=env))
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def time_zstd_cli(plain: Path, out: Path) -> Run:
    start = time.perf_counter()
    rss = wait_child(subprocess.Popen([*TIME, "zstd", "-q", "-f", "-T0", f"-{ZSTD_LEVEL}", "--check", "-o", str(out),
                                       str(plain)]))
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def time_gnu_cpio(tree: Path, out: Path) -> Run:
    env = {**os.environ, "LC_ALL": "C"}
    start = time.perf_counter()
    with open(out, "wb") as sink:
        find = subprocess.Popen(["find", "."], cwd=tree, stdout=subprocess.PIPE, env=env)
        sort = subprocess.Popen(["sort"], stdin=find.stdout, stdout=subprocess.PIPE, env=env)
        cpio = subprocess.Popen([*TIME, "cpio", "-o", "-H", "newc", "--reproducible", "--quiet"], cwd=tree,
                                stdin=sort.stdout, stdout=sink, env=env)
        assert find.stdout is not None and sort.stdout is not None
        find.stdout.close()
        sort.stdout.close()
        rss = wait_child(cpio)
        find.wait()
        sort.wait()
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def gen_init_cpio_list(tree: Path, listing: Path) -> None:
    """The description file gen_init_cpio reads, in byte order of names."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, tree)
            st = os.lstat(full)
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISDIR(st.st_mode):
                lines.append((rel, f"dir {rel} {mode} 0 0"))
            elif stat.S_ISLNK(st.st_mode):
                lines.append((rel, f"slink {rel} {os.readlink(full)} {mode} 0 0"))
            elif stat.S_ISREG(st.st_mode):
                lines.append((rel, f"file {rel} {full} {mode} 0 0"))
    listing.write_text("".join(line + "\n" for _, line in sorted(lines, key=lambda p: os.fsencode(p[0]))))


def time_gen_init_cpio(tool: Path, listing: Path, out: Path) -> Run:
    start = time.perf_counter()
    with open(out, "wb") as sink:
        proc = subprocess.Popen([*TIME, str(tool), "-t", str(EPOCH), str(listing)], stdout=sink)
        rss = wait_child(proc)
    return Run(time.perf_counter() - start, rss, out.stat().st_size)


def build_gen_init_cpio() -> Path:
    tool = CACHE / "gen_init_cpio"
    if tool.exists():
        return tool
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(LINUX_SOURCE) as tar:
        member = next(m for m in tar if m.name.endswith("/usr/gen_init_cpio.c"))
        source = tar.extractfile(member)
        assert source is not None
        (CACHE / "gen_init_cpio.c").write_bytes(source.read())
    subprocess.run(["gcc", "-O2", "-o", str(tool), str(CACHE / "gen_init_cpio.c")], check=True)
    return tool


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def repeat(n: int, fn: object, *args: Path) -> Run:
    runs = []
    for _ in range(n):
        runs.append(fn(*args))  # type: ignore[operator]
        args[-1].unlink()
    return best(runs)


def tree_stats(tree: Path) -> tuple[int, int]:
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        entries += len(dirnames) + len(filenames)
        size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in filenames)
    return entries, size


def compare_zstd(tree: Path, out: Path, mib: int, n: int) -> None:
    time_mkspawn(tree, out)
    plain = WORK / "plain.cpio"
    with open(out, "rb") as src, open(plain, "wb") as dst:
        dst.write(src.read(mib << 20))
    out.unlink()
    ours = repeat(n, time_zstd_ours, plain, out)
    peer = repeat(n, time_zstd_cli, plain, out)
    print(f"zstd -{ZSTD_LEVEL} of {plain.stat().st_size / 2**20:.0f} MiB of that archive:")
    for name, run in (("mkspawn", ours), ("zstd -T0", peer)):
        print(f"  {name:14} {run.seconds:7.2f} s  {run.size / 2**20:7.1f} MiB  "
              f"peak RSS {run.max_rss_kib / 1024:6.1f} MiB")
    print(f"  time ratio mkspawn / zstd -T0:      {ours.seconds / peer.seconds:.2f}x (goal <= 1.1x)")
    plain.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=Path, default=Path("/usr/lib/x86_64-linux-gnu"))
    parser.add_argument("--small", type=Path, default=Path("/usr/lib/gcc"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zstd-mib", type=int, default=100, help="MiB of the large archive to compress")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    out = WORK / "out.cpio"
    tool = build_gen_init_cpio()
    for label, tree in (("large", args.large), ("small", args.small)):
        entries, size = tree_stats(tree)
        print(f"{label} tree: {tree}: {entries} entries, {size / 2**20:.0f} MiB")
        time_gnu_cpio(tree, out)  # warm the page cache
        out.unlink()
        ours = repeat(args.repeat, time_mkspawn, tree, out)
        gnu = repeat(args.repeat, time_gnu_cpio, tree, out)
        listing = WORK / "list.txt"
        gen_init_cpio_list(tree, listing)
        kernel = repeat(args.repeat, time_gen_init_cpio, tool, listing, out)
        cat = repeat(args.repeat, time_cat, tree, out)
        for name, run in (("mkspawn", ours), ("GNU cpio", gnu), ("gen_init_cpio", kernel), ("cat", cat)):
            print(f"  {name:14} {run.seconds:7.2f} s  {run.size / 2**20:7.1f} MiB  "
                  f"peak RSS {run.max_rss_kib / 1024:6.1f} MiB")
        print(f"  time ratio mkspawn / GNU cpio:      {ours.seconds / gnu.seconds:.2f}x (goal <= 0.5x)")
        print(f"  time ratio mkspawn / gen_init_cpio: {ours.seconds / kernel.seconds:.2f}x")
        print(f"  time ratio mkspawn / cat:           {ours.seconds / cat.seconds:.2f}x (goal <= 1.5x)")
        if label == "large":
            compare_zstd(tree, out, args.zstd_mib, args.repeat)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
