"""A blob download redirected to storage on another origin, through a real proxy: the
redirect target is judged against NO_PROXY on its own, and the registry's credentials
stay behind whichever way it goes."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, docker_config, registry_port, running_proxy
from tests.registry.test_redirects import RedirectingRegistry, redirecting_registry  # noqa: F401  (the fixture)


@pytest.mark.parametrize("storage_direct", [True, False], ids=["storage-in-no-proxy", "storage-proxied"])
def test_redirect_target_is_judged_on_its_own(tmp_path: Path, request: pytest.FixtureRequest,
                                              bundles: dict[str, Path], trust: Path, storage_direct: bool) -> None:
    redirecting: RedirectingRegistry = request.getfixturevalue("redirecting_registry")
    registry, storage = redirecting.registry, redirecting.storage
    assert registry.ca_cert is not None
    config = json.loads((registry.log.parent / "config.yml").read_text())
    storage_host = urlsplit(config["middleware"]["storage"][0]["options"]["baseurl"]).netloc
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    ref = f"{registry.host}/proxied-redirect/demo:1"
    done = mkspawn("push", bundles["demo"], ref, "--ca-cert", registry.ca_cert, env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    with running_proxy(tmp_path / "proxy", [registry_port(registry)]) as proxy:
        env = {"HOME": str(home), "HTTPS_PROXY": proxy.url(), "HTTP_PROXY": proxy.url(),
               "NO_PROXY": storage_host if storage_direct else ""}
        storage.requests.clear()
        out = tmp_path / "pulled.mkb"
        done = mkspawn("pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert, env=env)
        assert done.returncode == 0, done.stderr
        carried = proxy.requests()
    assert out.read_bytes() == bundles["demo"].read_bytes()
    fetched = [path for method, path, _ in storage.requests if method == "GET"]
    assert len(fetched) >= 3
    assert [auth for _, _, auth in storage.requests if auth is not None] == []
    to_registry = [line for line in carried if line.startswith(f"CONNECT {registry.host} ")]
    to_storage = [line for line in carried if line.split()[1].startswith(f"http://{storage_host}/")]
    assert to_registry and len(to_registry) + len(to_storage) == len(carried), carried
    if storage_direct:
        assert to_storage == []
    else:
        assert sorted(line.split()[1].removeprefix(f"http://{storage_host}") for line in to_storage
                      if line.startswith("GET ")) == sorted(fetched)
