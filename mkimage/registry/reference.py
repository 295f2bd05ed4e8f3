"""Where a bundle is pushed to or pulled from: ``HOST[:PORT]/REPO[:TAG][@DIGEST]`` or
``oci:DIR[:TAG][@DIGEST]``.

The grammar is the distribution spec's, with one stricter rule taken from docker: the
first component must look like a host (a dot, a port or ``localhost``), so that a path
such as ``build/demo.mkb`` is never mistaken for a registry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from mkimage.errors import UsageError

DEFAULT_TAG = "latest"
LAYOUT_PREFIX = "oci:"

# distribution/reference: path components, tags and sha256 digests.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class RegistryRef:
    """A repository on a registry and one manifest in it (by tag, or by digest)."""

    host: str  # with the port, as credentials files key it
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True, slots=True)
class LayoutRef:
    """A manifest in an OCI image layout directory, named by its ref.name tag or digest."""

    directory: Path
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = f"{LAYOUT_PREFIX}{self.directory}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


Ref = RegistryRef | LayoutRef


def _split_digest(text: str, original: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, digest = text.rsplit("@", 1)
    if not _DIGEST.fullmatch(digest):
        raise _bad(original, f"digest {digest!r} is not sha256:<64 lowercase hex>")
    return rest, digest


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"{text}: not a reference: {why} (expected HOST[:PORT]/REPO[:TAG][@sha256:…] "
                      "or oci:DIR[:TAG])", code="bad-reference")


def parse_reference(text: str) -> Ref:
    """Parse a push/pull reference; UsageError (exit 2) naming what is wrong."""
    if text.startswith(LAYOUT_PREFIX):
        rest, digest = _split_digest(text[len(LAYOUT_PREFIX) :], text)
        directory, tag = rest, None
        # A tag follows the last ':' only if that ':' is after the last '/'.
        head, sep, tail = rest.rpartition(":")
        if sep and "/" not in tail:
            directory, tag = head, tail
            if not _TAG.fullmatch(tag):
                raise _bad(text, f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
        if not directory:
            raise _bad(text, "no directory after 'oci:'")
        return LayoutRef(Path(directory), tag, digest)

    rest, digest = _split_digest(text, text)
    host, slash, path = rest.partition("/")
    if not slash or not looks_like_host(host):
        raise _bad(text, "the first component must be a registry host (with a '.', a port, or 'localhost')")
    repository, tag = path, None
    name, sep, tail = path.rpartition(":")
    if sep and "/" not in tail:
        repository, tag = name, tail
        if not _TAG.fullmatch(tag):
            raise _bad(text, f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    if not _REPOSITORY.fullmatch(repository):
        raise _bad(text, f"repository {repository!r} is not lowercase components separated by '/'")
    return RegistryRef(host, repository, tag, digest)


def looks_like_host(text: str) -> bool:
    if not _HOST.fullmatch(text):
        return False
    return "." in text or ":" in text or text == "localhost"


def is_loopback(hostname: str) -> bool:
    """Only names that cannot leave this machine: ``localhost`` and loopback addresses."""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
