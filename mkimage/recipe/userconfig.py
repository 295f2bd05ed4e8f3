"""The machine's own configuration: how this host (a laptop, a CI runner) builds.

Recipes say *what* to build and stay machine-independent; ``config.toml`` says *how*
this machine builds it: a shared compiler cache, distcc hosts, make's job count
(docs/build-farms.md).  Nothing in it reaches a bundle or a kernel cache key.

The file is ``$MKSPAWN_CONFIG`` when set, else ``${XDG_CONFIG_HOME:-~/.config}/mkspawn/
config.toml``; an absent default file means the defaults, a file named explicitly must
exist.  It is loaded by the recipe loader's own machinery, so a mistake is reported the
same way: ``config.toml:3: [build] jobs: expected an integer, got "4" [bad-type]``.

Credentials in a remote cache URL (``redis://:secret@host``, ``http://user:pw@host``,
``|bearer-token=…``) never appear in a message: :func:`redact` replaces them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mkimage.errors import Location, RecipeError, shown_path
from mkimage.recipe.load import Converter, Sources, read_toml_file, unknown_key_message
from mkimage.recipe.model import section
from mkimage.recipe.settings import in_range, optional, setting

CONFIG_ENV = "MKSPAWN_CONFIG"
CONFIG_SECTIONS = ("build",)
REDACTED = "***"

# ccache 4.7's remote storage (man ccache, "Remote storage backends"): the schemes and the
# attributes a URL may carry after "|".  HTTPS is not supported by ccache's http backend.
SCHEMES = ("redis", "redis+unix", "http")
COMMON_ATTRIBUTES = ("read-only", "connect-timeout", "operation-timeout")
HTTP_ATTRIBUTES = ("keep-alive", "layout", "bearer-token")
SECRET_ATTRIBUTES = ("bearer-token",)
HTTP_LAYOUTS = ("bazel", "flat", "subdirs")


# ---- redaction ----------------------------------------------------------------------

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/\s|]*)@")
_SECRET_ATTR = re.compile(r"\|(?P<name>" + "|".join(SECRET_ATTRIBUTES) + r")=[^|\s]*")


def redact(text: str) -> str:
    """``text`` with every URL's user and password and every secret attribute replaced
    by ``***``: safe to log, show or put in an error."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _SECRET_ATTR.sub(lambda m: f"|{m['name']}={REDACTED}", text)


# ---- the remote cache URL -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RemoteCache:
    """A ccache remote storage URL taken apart: what the probe connects to."""

    url: str  # as given, attributes included: CCACHE_REMOTE_STORAGE
    scheme: str
    host: str | None  # None for redis+unix
    port: int | None
    socket_path: str | None  # redis+unix
    path: str  # http: the URL's path
    username: str | None
    password: str | None
    attributes: dict[str, str]

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def ccache_url(self) -> str:
        """The URL as ccache 4.7 reads it: it ignores the password of the common
        ``redis://:PASSWORD@HOST`` spelling (measured: NOAUTH), so that one is handed
        over as ``redis://PASSWORD@HOST``."""
        if self.scheme == "redis" and self.username is None and self.password is not None:
            return re.sub(r"^(redis://):", r"\1", self.url, flags=re.IGNORECASE)
        return self.url

    @property
    def read_only(self) -> bool:
        return self.attributes.get("read-only", "false") in ("", "true")


def parse_remote_cache(text: str) -> RemoteCache:
    """Split and check a ccache remote storage URL; ValueError (already redacted) names
    what is wrong."""
    shown = redact(text)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"expected one ccache remote storage URL without spaces, got {shown!r}")
    url, *attrs = text.split("|")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "https":
        raise ValueError(f"ccache's http backend does not support HTTPS ({shown!r}); use a TLS-terminating "
                         "proxy on the runner and an http:// URL")
    if scheme not in SCHEMES:
        raise ValueError(f"expected a redis://, redis+unix: or http:// URL, got {shown!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {shown!r}") from None
    attributes = _attributes(attrs, scheme, shown)
    username, password = parts.username, parts.password
    if scheme == "redis" and username is not None and password is None:
        username, password = None, username  # redis://PASSWORD@HOST: a password alone
    if username == "":
        username = None  # redis://:PASSWORD@HOST
    if scheme == "redis+unix":
        socket_path = parts.path
        if not socket_path.startswith("/"):
            raise ValueError(f"expected redis+unix:/PATH/TO/SOCKET, got {shown!r}")
        return RemoteCache(text, scheme, None, None, socket_path, "", username, password, attributes)
    if not parts.hostname:
        raise ValueError(f"no host in {shown!r}")
    if scheme == "redis" and not re.fullmatch(r"(/\d*)?", parts.path):
        raise ValueError(f"a redis URL's path is a database number (redis://HOST:PORT/0), got {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"unexpected query or fragment in {shown!r}")
    default_port = 6379 if scheme == "redis" else 80
    return RemoteCache(text, scheme, parts.hostname, port or default_port, None, parts.path or "/",
                       username, password, attributes)


def _attributes(attrs: Sequence[str], scheme: str, shown: str) -> dict[str, str]:
    known = COMMON_ATTRIBUTES + (HTTP_ATTRIBUTES if scheme == "http" else ())
    found: dict[str, str] = {}
    for attr in attrs:
        name, _, value = attr.partition("=")
        if name == "shards":
            raise ValueError("the shards attribute is not supported: give one server per URL (mkspawn probes "
                             "the server before the build)")
        if name not in known:
            raise ValueError(f"unknown attribute {name!r} for a {scheme} remote cache (known: {', '.join(known)})")
        if name in ("read-only", "keep-alive") and value not in ("", "true", "false"):
            raise ValueError(f"|{name} takes true or false, got {value!r}")
        if name.endswith("-timeout") and not value.isdigit():
            raise ValueError(f"|{name} takes milliseconds, got {value!r}")
        if name == "layout" and value not in HTTP_LAYOUTS:
            raise ValueError(f"|layout takes one of {', '.join(HTTP_LAYOUTS)}, got {value!r}")
        found[name] = value
    return found


def check_remote_cache(value: Any) -> str | None:
    try:
        parse_remote_cache(str(value))
    except ValueError as e:
        return str(e)
    return None


# ---- distcc hosts (man distcc, "Host specifications") --------------------------------

@dataclass(frozen=True, slots=True)
class DistccHost:
    spec: str
    kind: str  # "local", "tcp", "ssh" or "option" (--randomize, --localslots=N)
    host: str | None = None
    port: int = 3632
    slots: int = 0  # the jobs the client sends there (distcc's default: 4, localhost 2)


_HOSTID = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
_OPTIONS = r"(?P<options>(?:,[A-Za-z]+(?:=[^,\s]+)?)*)"
_LOCAL = re.compile(r"localhost(?:/(?P<limit>\d+))?")
_TCP = re.compile(rf"(?P<host>{_HOSTID})(?::(?P<port>\d+))?(?:/(?P<limit>\d+))?{_OPTIONS}")
_TCP_OLD = re.compile(rf"(?P<host>{_HOSTID})/(?P<limit>\d+):(?P<port>\d+){_OPTIONS}")
_SSH = re.compile(rf"(?:[A-Za-z0-9._-]+)?@(?P<host>{_HOSTID})(?:/(?P<limit>\d+))?(?::(?P<command>/[^,\s]+))?{_OPTIONS}")
_GLOBAL = re.compile(r"--randomize|--localslots(?:_cpp)?=\d+")
DEFAULT_SLOTS, LOCAL_SLOTS = 4, 2


def parse_distcc_host(spec: str) -> DistccHost:
    """One entry of distcc's host list; ValueError names what is wrong."""
    if not spec or any(c.isspace() for c in spec):
        raise ValueError(f"expected one distcc host per list item, got {spec!r}")
    if _GLOBAL.fullmatch(spec):
        return DistccHost(spec, "option")
    if spec == "+zeroconf":
        raise ValueError("+zeroconf is not supported: list the hosts (mkspawn probes them and matches the job "
                         "count to their slots)")
    m = _LOCAL.fullmatch(spec)
    if m:
        return DistccHost(spec, "local", "localhost", 0, _limit(m["limit"], LOCAL_SLOTS, spec))
    for kind, rx in (("ssh", _SSH), ("tcp", _TCP), ("tcp", _TCP_OLD)):
        m = rx.fullmatch(spec)
        if m is None:
            continue
        for option in filter(None, m["options"].split(",")):
            name = option.partition("=")[0]
            if name == "cpp":
                raise ValueError(f"{spec!r}: pump mode (,cpp) preprocesses on the server; mkspawn keeps "
                                 "preprocessing local so the objects stay reproducible")
            if name not in ("lzo", "auth"):
                raise ValueError(f"{spec!r}: unknown host option ,{name} (known: ,lzo, ,auth)")
        port = int(m.groupdict().get("port") or 3632)
        if not 1 <= port <= 65535:
            raise ValueError(f"{spec!r}: port {port} is not 1..65535")
        return DistccHost(spec, kind, m["host"].strip("[]"), port, _limit(m["limit"], DEFAULT_SLOTS, spec))
    raise ValueError(f"expected a distcc host such as localhost/2, HOST:PORT/N or HOST/N,lzo, got {spec!r}")


def _limit(text: str | None, default: int, spec: str) -> int:
    if text is None:
        return default
    if int(text) < 1:
        raise ValueError(f"{spec!r}: a host's job limit is at least 1")
    return int(text)


def check_distcc_hosts(value: Any) -> str | None:
    try:
        hosts = [parse_distcc_host(str(v)) for v in value]
    except ValueError as e:
        return str(e)
    if hosts and all(h.kind == "option" for h in hosts):
        return "names no host (only options); add localhost/N or HOST:PORT/N"
    return None


# ---- the settings -------------------------------------------------------------------

@section
@dataclass(frozen=True, slots=True)
class BuildSettings:
    """[build]: how this machine compiles kernels.  None of it changes a bundle's bytes."""

    remote_cache: str | None = field(
        default=None,
        metadata=setting("ccache remote storage shared with other runners: redis://[[USER:]PASSWORD@]HOST[:PORT]"
                         "[/DB], redis+unix:/SOCKET or http://HOST[:PORT]/PATH, optionally followed by ccache "
                         "attributes such as |read-only or |connect-timeout=MS.",
                         check=optional(check_remote_cache), example='"redis://cache.ci.example:6379|read-only"'),
    )
    remote_only: bool = field(
        default=False,
        metadata=setting("Use the remote cache only, no local ccache directory (CCACHE_REMOTE_ONLY)."),
    )
    distcc_hosts: list[str] = field(
        default_factory=list,
        metadata=setting("distcc hosts to compile on (distcc's host syntax: localhost/N, HOST[:PORT][/N][,lzo]); "
                         "preprocessing stays local.", check=check_distcc_hosts,
                         example='["localhost/2", "build1.example:3632/8,lzo"]'),
    )
    jobs: int | None = field(
        default=None,
        metadata=setting("make's job count. Unset: the sum of the distcc hosts' slots, else the recipe's "
                         "[kernel] jobs, else the number of CPUs.", check=optional(in_range(1, 1024))),
    )

    def __repr__(self) -> str:  # a traceback or a debugger must not show the credentials either
        return (f"BuildSettings(remote_cache={None if self.remote_cache is None else redact(self.remote_cache)!r}, "
                f"remote_only={self.remote_only!r}, distcc_hosts={self.distcc_hosts!r}, jobs={self.jobs!r})")

    @property
    def farm(self) -> bool:
        """Whether anything here reaches past this machine."""
        return self.remote_cache is not None or bool(self.distcc_hosts)

    def hosts(self) -> list[DistccHost]:
        return [parse_distcc_host(h) for h in self.distcc_hosts]

    def remote(self) -> RemoteCache | None:
        return None if self.remote_cache is None else parse_remote_cache(self.remote_cache)


@dataclass(frozen=True, slots=True)
class UserConfig:
    build: BuildSettings = field(default_factory=BuildSettings)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    settings: BuildSettings
    path: Path | None  # the file read, None when there was none


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "mkspawn" / "config.toml"


def load_user_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """``path`` (--config), else $MKSPAWN_CONFIG, else the default file when it exists.

    RecipeError (exit 2) for a named file that is missing, and for any bad key or value,
    with its file:line and [build] key."""
    env = os.environ if env is None else env
    origin = "--config"
    if path is None and env.get(CONFIG_ENV):
        path, origin = Path(env[CONFIG_ENV]), f"${CONFIG_ENV}"
    if path is None:
        path = default_config_path(env)
        if not path.exists():
            return LoadedConfig(BuildSettings(), None)
        origin = ""
    path = Path(os.path.abspath(path))
    if not path.exists():
        raise RecipeError(Location(None, origin=origin), None, f"no such config file: {shown_path(path)}",
                          code="no-such-file")
    if not path.is_file():
        raise RecipeError(Location(path), None, "not a regular file", code="not-a-regular-file")
    sources: Sources = {}
    data, locs = read_toml_file(path, sources)
    conv = Converter(locs, sources, path.parent)
    for key in data:
        if key not in CONFIG_SECTIONS:
            raise conv.fail((key,), unknown_key_message(key, list(CONFIG_SECTIONS)), "unknown-key")
    config: UserConfig = conv.table(UserConfig, data, ())
    return LoadedConfig(config.build, path)


def with_overrides(settings: BuildSettings, *, remote_cache: str | None = None, distcc_hosts: str | None = None,
                   jobs: int | None = None) -> BuildSettings:
    """The command line over the file: ``--remote-cache URL`` (``""`` turns it off),
    ``--distcc-hosts "SPEC SPEC"`` (distcc's own space-separated list; ``""`` turns it
    off), ``--make-jobs N``.  A bad value is refused naming its option."""
    changes: dict[str, Any] = {}
    if remote_cache is not None:
        problem = check_remote_cache(remote_cache) if remote_cache else None
        if problem:
            raise RecipeError(Location(None, origin="--remote-cache"), None, problem, code="bad-value")
        changes["remote_cache"] = remote_cache or None
    if distcc_hosts is not None:
        hosts = distcc_hosts.split()
        problem = check_distcc_hosts(hosts)
        if problem:
            raise RecipeError(Location(None, origin="--distcc-hosts"), None, problem, code="bad-value")
        changes["distcc_hosts"] = hosts
    if jobs is not None:
        changes["jobs"] = jobs
    return dataclasses.replace(settings, **changes)
