"""Registry credentials the way container tools keep them, and auth challenges.

Credentials come from ``$REGISTRY_AUTH_FILE`` (podman, skopeo) and then
``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (docker), both in docker's
format.  The first file that speaks for a registry decides, in docker's order:
``credHelpers[HOST]`` names a credential helper for that registry, else ``credsStore``
one for every registry, else ``auths[HOST]`` holds ``base64("user:pass")`` (or an
``identitytoken``).  A helper is the docker-credential-helpers protocol:
``docker-credential-NAME get`` reads the registry on stdin and prints
``{"Username": …, "Secret": …}``; the username ``<token>`` makes the secret an identity
(OAuth2 refresh) token.  A secret is only ever held in a ``Credentials`` whose repr
hides it; it never goes into argv, a log line or a message, which name its source.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.errors import InputError, RegistryError, ToolError
from mkimage.run import run

HELPER_PREFIX = "docker-credential-"
IDENTITY_TOKEN_USER = "<token>"  # docker's marker: the secret is an identity token
# What every docker-credential-helpers helper prints when it has nothing for the registry.
NOT_FOUND_MESSAGE = "credentials not found in native keychain"
_MAX_HELPER_OUTPUT = 1 << 20


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str  # where they came from, for messages: a file, or a helper and its file
    identity_token: bool = False  # password is an OAuth2 refresh token, only for a token service

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme and its parameters."""

    scheme: str  # lowercased: "basic" or "bearer"
    params: Mapping[str, str]


def auth_files(env: Mapping[str, str]) -> list[Path]:
    """Where credentials are looked for, first match wins."""
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    elif env.get("HOME"):
        files.append(Path(env["HOME"]) / ".docker" / "config.json")
    return files


def find_credentials(host: str, env: Mapping[str, str], timeout_s: float = 60.0) -> Credentials | None:
    """The credentials the first auth file that speaks for ``host`` (``HOST[:PORT]``) holds,
    asking its credential helper if it names one; None if no file does, or its helper
    has none.  A helper gets ``timeout_s`` to answer."""
    for path in auth_files(env):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise InputError(f"{path}: cannot read credentials: {e.strerror}", code="bad-auth-file") from None
        doc = _parse(path, text)
        helper = _helper_for(path, doc, host)
        if helper is not None:
            name, where = helper
            return _ask_helper(name, where, host, env, timeout_s)
        found = _entry(path, doc, host)
        if found is not None:
            return found
    return None


def _keys(host: str) -> tuple[str, ...]:
    """How tools spell a registry as a key: bare, or as an old-style URL."""
    return host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/"


def _parse(path: Path, text: str) -> dict[str, object]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InputError(f"{path}: not a JSON credentials file: {e}", code="bad-auth-file") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a JSON object", code="bad-auth-file")
    return doc


def _helper_for(path: Path, doc: Mapping[str, object], host: str) -> tuple[str, str] | None:
    """The helper this file names for ``host`` and how to name where it was configured:
    ``credHelpers[HOST]`` over ``credsStore``."""
    helpers = doc.get("credHelpers", {})
    if not isinstance(helpers, dict):
        raise InputError(f"{path}: 'credHelpers' is not an object", code="bad-auth-file")
    for key in _keys(host):
        if key in helpers:
            return _helper_name(path, f"credHelpers[{key!r}]", helpers[key]), f"credHelpers in {path}"
    if doc.get("credsStore") not in (None, ""):
        return _helper_name(path, "credsStore", doc["credsStore"]), f"credsStore in {path}"
    return None


def _helper_name(path: Path, where: str, name: object) -> str:
    # The name becomes part of a program name looked up on PATH: no paths, no options.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"{path}: {where} is not a credential helper name", code="bad-auth-file")
    return name


def _ask_helper(name: str, where: str, host: str, env: Mapping[str, str], timeout_s: float) -> Credentials | None:
    program = HELPER_PREFIX + name
    source = f"{program} ({where})"
    # The registry goes in on stdin, as docker does; run() takes stdin from a file.
    with tempfile.NamedTemporaryFile(prefix="mkspawn-credential-", suffix=".in") as query:
        query.write(host.encode())
        query.flush()
        try:
            # The helper gets the caller's environment: keychains need DBUS, GNUPGHOME, ...
            done = run([program, "get"], stage="credentials", timeout_s=timeout_s, env=env, check=False,
                       stdin_path=Path(query.name))
        except ToolError as e:
            if e.code == "tool-missing":
                raise InputError(f"{host}: credential helper {program} named by {where} is not on PATH",
                                 code="credential-helper-missing") from None
            raise RegistryError(f"{host}: credential helper {source} did not answer within {timeout_s:g}s",
                                code="credential-helper-failed") from None
    output = done.stdout[:_MAX_HELPER_OUTPUT].decode("utf-8", "replace").strip()
    if done.returncode != 0:
        if output == NOT_FOUND_MESSAGE:
            return None
        # A failing helper prints its reason (never the secret it failed to find).
        reason = (output or done.stderr.decode("utf-8", "replace").strip()).splitlines()
        raise RegistryError(f"{host}: credential helper {source} failed (status {done.returncode})"
                            + (f": {reason[0][:200]}" if reason else ""), code="credential-helper-failed")
    try:
        doc = json.loads(output)
    except ValueError:
        doc = None
    username = doc.get("Username") if isinstance(doc, dict) else None
    secret = doc.get("Secret") if isinstance(doc, dict) else None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        # Not quoted: whatever it printed may hold the secret.
        raise RegistryError(f"{host}: credential helper {source} printed no {{\"Username\", \"Secret\"}} JSON",
                            code="credential-helper-failed")
    return Credentials(username, secret, source, identity_token=username == IDENTITY_TOKEN_USER)


def _entry(path: Path, doc: Mapping[str, object], host: str) -> Credentials | None:
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise InputError(f"{path}: 'auths' is not an object", code="bad-auth-file")
    for key in _keys(host):
        entry = auths.get(key)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise InputError(f"{path}: auths[{key!r}] is not an object", code="bad-auth-file")
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            return Credentials(IDENTITY_TOKEN_USER, entry["identitytoken"], str(path), identity_token=True)
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InputError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'",
                                 code="bad-auth-file") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InputError(f"{path}: auths[{key!r}].auth is not base64 of 'user:password'",
                                 code="bad-auth-file")
            return Credentials(user, password, str(path))
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], str(path))
    return None


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """``Basic realm="x"`` / ``Bearer realm="…",service="…",scope="…"``; None if unparsable."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None or match.end() == pos:
            return None
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        pos = match.end()
    return Challenge(scheme.lower(), params)
