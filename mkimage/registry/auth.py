"""Registry credentials the way container tools keep them, and auth challenges.

Credentials come from ``$REGISTRY_AUTH_FILE`` (podman, skopeo) and then
``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (docker), both in docker's
``{"auths": {"HOST[:PORT]": {"auth": base64("user:pass")}}}`` format.  A password is
only ever held in a ``Credentials`` whose repr hides it; messages name the file instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.errors import InputError


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: Path

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


def find_credentials(host: str, env: Mapping[str, str]) -> Credentials | None:
    """The first ``auths`` entry for ``host`` (as ``HOST[:PORT]``, with or without a scheme)."""
    for path in auth_files(env):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise InputError(f"{path}: cannot read credentials: {e.strerror}", code="bad-auth-file") from None
        found = _entry(path, text, host)
        if found is not None:
            return found
    return None


def _entry(path: Path, text: str, host: str) -> Credentials | None:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InputError(f"{path}: not a JSON credentials file: {e}", code="bad-auth-file") from None
    auths = doc.get("auths", {}) if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise InputError(f"{path}: 'auths' is not an object", code="bad-auth-file")
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/"):
        entry = auths.get(key)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise InputError(f"{path}: auths[{key!r}] is not an object", code="bad-auth-file")
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
            return Credentials(user, password, path)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], path)
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
