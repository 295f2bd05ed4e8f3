"""Build farms for the kernel stage: ccache's remote storage and distcc, driven, not
reimplemented (docs/build-farms.md).

Before make runs, the configured remote cache and distcc hosts are probed once, with a
short timeout.  An unreachable remote cache is left out of the build (one warning, the
local cache serves alone); unreachable distcc hosts stay in the list (one warning) and
distcc's own fallback compiles their jobs locally.  Either way the objects are the same
bytes: ccache checks every entry it reads against its checksum, and distcc preprocesses
locally (pump mode is refused), so only the compiler proper runs elsewhere.

Afterwards the build's own figures are read from ccache's stats log and distcc's client
log, both kept in the kernel cache entry beside build.log.  None of this reaches the
cache key, the bundle's provenance or any bundle byte.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
from base64 import b64encode
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from mkimage.errors import ToolError
from mkimage.recipe.userconfig import BuildSettings, DistccHost, RemoteCache
from mkimage.run import run

log = logging.getLogger("mkspawn")

PROBE_TIMEOUT_S = 3.0
STATS_LOG_NAME = "ccache-stats.log"  # ccache's own per-build stats log (stats_log)
DISTCC_LOG_NAME = "distcc.log"  # distcc's client log (DISTCC_LOG)
FARM_LOGS = (STATS_LOG_NAME, DISTCC_LOG_NAME)
BACKOFF_S = 5


# ---- probes -------------------------------------------------------------------------

def probe_remote(remote: RemoteCache, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the remote cache answers (and accepts the credentials), else what is
    wrong.  Nothing returned carries a credential."""
    try:
        if remote.scheme == "http":
            return _probe_http(remote, timeout_s)
        return _probe_redis(remote, timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


def _probe_redis(remote: RemoteCache, timeout_s: float) -> str | None:
    if remote.socket_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(remote.socket_path)
        except OSError:
            sock.close()
            raise
    else:
        assert remote.host is not None and remote.port is not None
        sock = socket.create_connection((remote.host, remote.port), timeout=timeout_s)
    with sock, sock.makefile("rb") as replies:
        if remote.password is not None:
            auth = [remote.username, remote.password] if remote.username else [remote.password]
            sock.sendall(_resp("AUTH", *(unquote(a) for a in auth)))
            reply = replies.readline()
            if not reply.startswith(b"+"):
                return "refused the credentials"
        sock.sendall(_resp("PING"))
        reply = replies.readline()
    if reply.startswith(b"+PONG"):
        return None
    if reply.startswith(b"-NOAUTH"):
        return "needs a password (redis://:PASSWORD@HOST)"
    return f"is not a Redis server (answered {reply[:40]!r})" if reply else "closed the connection"


def _resp(*words: str) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _probe_http(remote: RemoteCache, timeout_s: float) -> str | None:
    import http.client  # here: every kernel build imports this module, few probe HTTP

    assert remote.host is not None and remote.port is not None
    headers = {}
    if remote.username is not None or remote.password is not None:
        pair = f"{unquote(remote.username or '')}:{unquote(remote.password or '')}"
        headers["Authorization"] = "Basic " + b64encode(pair.encode()).decode()
    if "bearer-token" in remote.attributes:
        headers["Authorization"] = "Bearer " + unquote(remote.attributes["bearer-token"])
    conn = http.client.HTTPConnection(remote.host, remote.port, timeout=timeout_s)
    try:
        # Any answer proves the server is there; a missing key is a 404 to ccache too.
        conn.request("HEAD", remote.path, headers=headers)
        status = conn.getresponse().status
    except http.client.HTTPException as e:
        return f"is not an HTTP server ({type(e).__name__})"
    finally:
        conn.close()
    return f"refused the credentials (HTTP {status})" if status in (401, 403) else None


def probe_host(host: DistccHost, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP host accepts a connection on its port; localhost, options and SSH
    hosts (reached by ssh at compile time) are not probed."""
    if host.kind != "tcp":
        return None
    assert host.host is not None
    try:
        with socket.create_connection((host.host, host.port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


def probe_hosts(hosts: Sequence[DistccHost], timeout_s: float = PROBE_TIMEOUT_S) -> list[str | None]:
    if not hosts:
        return []
    from concurrent.futures import ThreadPoolExecutor  # only a build with distcc hosts needs it

    with ThreadPoolExecutor(max_workers=min(len(hosts), 16)) as pool:
        return list(pool.map(lambda h: probe_host(h, timeout_s), hosts))


# ---- one build's plan ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FarmPlan:
    """What the compile's make gets from [build]: extra environment and, for distcc, a
    job count matched to the hosts (None: the caller's default)."""

    env: dict[str, str] = field(default_factory=dict)
    jobs: int | None = None
    remote: str | None = None  # the remote cache in use, redacted for messages
    distcc: bool = False


def plan_farm(settings: BuildSettings, build_dir: Path, *, ccache: bool) -> FarmPlan:
    """Probe what ``settings`` name and decide the compile's environment; warns once per
    unreachable service.  Without ccache nothing is farmed out."""
    env = {"CCACHE_STATSLOG": str(build_dir / STATS_LOG_NAME)} if ccache else {}
    if not settings.farm:
        return FarmPlan(env)
    if not ccache:
        log.warning("kernel: ccache is not installed (Debian package ccache); [build] remote_cache and "
                    "distcc_hosts need it, so this build compiles locally")
        return FarmPlan()
    remote = settings.remote()
    shown = None
    if remote is not None:
        problem = probe_remote(remote)
        if problem is None:
            env["CCACHE_REMOTE_STORAGE"] = remote.ccache_url
            if settings.remote_only:
                env["CCACHE_REMOTE_ONLY"] = "1"
            shown = remote.shown
            log.info("kernel: remote cache %s%s", shown, " (read-only)" if remote.read_only else "")
        else:
            log.warning("kernel: remote cache %s is unreachable (%s); building with the local cache only",
                        remote.shown, problem)
    hosts = settings.hosts()
    if not hosts:
        return FarmPlan(env, None, shown, False)
    distcc = shutil.which("distcc")
    if distcc is None:
        log.warning("kernel: distcc is not installed (Debian package distcc); compiling locally instead of on "
                    "%s", " ".join(settings.distcc_hosts))
        return FarmPlan(env, None, shown, False)
    problems = probe_hosts(hosts)
    down = [f"{h.spec} ({p})" for h, p in zip(hosts, problems, strict=True) if p is not None]
    live = [h for h, p in zip(hosts, problems, strict=True) if p is None and h.kind != "option"]
    if down:
        log.warning("kernel: distcc host%s unreachable: %s; %s", "s" if len(down) > 1 else "", ", ".join(down),
                    "left out of this build" if live else "distcc compiles all jobs locally")
    state = build_dir / "distcc"
    state.mkdir(parents=True, exist_ok=True)  # distcc does not create it, and runs every job locally without it
    env.update({
        "CCACHE_PREFIX": distcc,
        # With a host up, the dead ones are left out rather than tried by every job; with
        # none up, distcc's own fallback compiles here (and backs off from them).
        "DISTCC_HOSTS": " ".join(h.spec for h, p in zip(hosts, problems, strict=True) if p is None or not live),
        "DISTCC_LOG": str(build_dir / DISTCC_LOG_NAME),
        # Lock and back-off state of this build alone: a host that was down for an
        # earlier build is tried again.
        "DISTCC_DIR": str(state),
    })
    if live:
        # distcc backs off from a host for 60 s after any failed remote compile, and every
        # kernel with IKCONFIG has one: kernel/configs.c .incbin's a file the host lacks
        # (distcc then compiles it here, correctly).  Measured on minimal.toml: 90 of 678
        # objects compiled locally during that minute.  The hosts were just probed, so a
        # short back-off is enough.
        env["DISTCC_BACKOFF_PERIOD"] = str(BACKOFF_S)
    # Every host down: distcc falls back to this machine, so make runs a local build's jobs.
    jobs = sum(h.slots for h in live) or None
    return FarmPlan(env, jobs, shown, True)


# ---- one build's figures ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CcacheFigures:
    """One build's compiles as ccache's stats log records them."""

    local_hits: int = 0
    remote_hits: int = 0
    misses: int = 0  # compiled
    rejected: int = 0  # read from the remote cache but refused (checksum, format): compiled again
    remote_errors: int = 0
    uncacheable: int = 0  # compiler probes, and calls ccache passed straight on (links, -E, unsupported options)

    @property
    def compiles(self) -> int:
        return self.local_hits + self.remote_hits + self.misses

    def describe(self) -> str:
        text = (f"ccache: {self.compiles} compiles: {self.local_hits} local hits, {self.remote_hits} remote hits, "
                f"{self.misses} misses")
        if self.rejected:
            text += f" ({self.rejected} remote entries refused as corrupt)"
        return text + f", {self.remote_errors} remote errors"


_HIT = frozenset({"direct_cache_hit", "preprocessed_cache_hit"})


def read_stats_log(path: Path) -> CcacheFigures:
    """Figures from a ccache stats log: one ``# file`` line per call, then the counters
    it incremented.  kbuild's compiler-option probes (``-c -x c /dev/null``) are not
    objects and are counted as uncacheable calls."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return CcacheFigures()
    counts: Counter[str] = Counter()
    for record in re.split(r"^(?=# )", text, flags=re.MULTILINE):
        header, _, body = record.partition("\n")
        ids = set(body.split())
        if not header.startswith("# ") or not ids:
            continue
        if header == "# /dev/null":
            counts["uncacheable"] += 1
        elif ids & _HIT:
            counts["remote_hits" if "remote_storage_hit" in ids and "local_storage_hit" not in ids
                   else "local_hits"] += 1
        elif "cache_miss" in ids:
            counts["misses"] += 1
            counts["rejected"] += "remote_storage_hit" in ids
        else:
            counts["uncacheable"] += 1
        counts["remote_errors"] += bool(ids & {"remote_storage_error", "remote_storage_timeout"})
    return CcacheFigures(**counts)


@dataclass(frozen=True, slots=True)
class DistccFigures:
    """One build's compiles as distcc's client log records them."""

    by_host: dict[str, int] = field(default_factory=dict)  # "localhost": run here
    fallbacks: int = 0  # jobs a host did not take, compiled here instead

    @property
    def remote(self) -> int:
        return sum(n for host, n in self.by_host.items() if host != "localhost")

    @property
    def local(self) -> int:
        return self.by_host.get("localhost", 0)

    def describe(self) -> str:
        hosts = ", ".join(f"{n} on {h}" for h, n in sorted(self.by_host.items()) if h != "localhost")
        return (f"distcc: {self.remote} objects compiled remotely{f' ({hosts})' if hosts else ''}, "
                f"{self.local} locally, {self.fallbacks} of them after a host failed or was down")


# "(null)": kbuild's compiler-option probes (``-c -x c /dev/null``), not objects.
_DISTCC_DONE = re.compile(r"\bcompile (?!\(null\) )\S+ on (\S+) completed ok$")
_DISTCC_FALLBACK = re.compile(r"\bfailed to distribute\b.*\brunning locally instead$")


def read_distcc_log(path: Path) -> DistccFigures:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return DistccFigures()
    hosts: Counter[str] = Counter()
    fallbacks = 0
    for line in lines:
        m = _DISTCC_DONE.search(line)
        if m:
            hosts[m[1]] += 1
        elif _DISTCC_FALLBACK.search(line):
            fallbacks += 1
    return DistccFigures(dict(hosts), fallbacks)


def report_build(build_dir: Path, plan: FarmPlan) -> None:
    """Log (at -v) the build's ccache and distcc figures."""
    stats = build_dir / STATS_LOG_NAME
    if stats.is_file():
        log.info("kernel: %s", read_stats_log(stats).describe())
    if plan.distcc:
        log.info("kernel: %s", read_distcc_log(build_dir / DISTCC_LOG_NAME).describe())


# ---- the local ccache's running totals (doctor) -------------------------------------

REMOTE_COUNTERS = ("remote_storage_hit", "remote_storage_miss", "remote_storage_error", "remote_storage_timeout",
                   "remote_storage_write")


def ccache_counters(ccache_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Every counter of ``ccache --print-stats`` for ``ccache_dir`` (empty when ccache is
    missing or the directory holds no statistics yet)."""
    if not ccache_dir.is_dir():
        return {}
    try:
        done = run(["ccache", "--print-stats"], stage="doctor", timeout_s=PROBE_TIMEOUT_S * 3,
                   env={**(env or {}), "CCACHE_DIR": str(ccache_dir)}, check=False)
    except ToolError:
        return {}
    counters: dict[str, int] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            counters[name] = int(value)
    return counters
