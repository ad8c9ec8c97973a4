"""Integration tier: real dockerd hosts built by lab, driven with the docker CLI.

The lab (network namespace + mount namespace + dockerd + pyoverlay plugin per
host) is shared by the tests of one module and torn down at its end, also
when a test fails.  Each test creates its own networks and containers through
`scratch`, which removes them afterwards, so one failure does not leak into
the next test.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Scratch, require_root

from lab.hosts import DOCKERD, LIB_ROOT, Host, Lab
from lab.registry import Release
from lab.vms import VmCluster


def require_docker() -> None:
    require_root()
    if shutil.which(DOCKERD) is None:
        if __import__("os").environ.get("CI") == "true":
            pytest.fail(f"{DOCKERD} is missing; scripts/install installs docker.io")
        pytest.skip("dockerd is not installed (scripts/install)")


@pytest.fixture(scope="session")
def release() -> Iterator[Release]:
    """This checkout's plugin, published once for the session; each lab that asks gets a
    registry of its own serving it (hosts then `docker plugin install` it)."""
    LIB_ROOT.mkdir(parents=True, exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="release-", dir=LIB_ROOT))
    try:
        yield Release(store)
    finally:
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def vms() -> VmCluster:
    """The Vagrant VMs, when the tests run with --hosts vagrant (scripts/test-vm)."""
    return VmCluster()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    if request.config.getoption("--hosts") == "vagrant":
        cluster = request.getfixturevalue("vms")
        yield cluster  # same interface, as far as the tests marked vm use it
        if request.session.testsfailed:
            for h in cluster.hosts:
                print(f"--- plugin log {h.name} (tail) ---\n{h.plugin_log()[-4000:]}")
        assert not cluster.down()
        return
    require_docker()
    hosts = getattr(request.module, "HOSTS", 1)
    lab = Lab("i" + secrets.token_hex(2), hosts=hosts)
    try:
        yield lab.up(
            plugin=getattr(request.module, "LEGACY_PLUGIN", True),
            dockerd_args=getattr(request.module, "DOCKERD_ARGS", ()),
        )
    finally:
        for h in lab.hosts:
            log = h.plugin_log()
            if log and request.session.testsfailed:
                print(f"--- plugin log {h.name} (tail) ---\n{log[-4000:]}")
        problems = lab.down()
        assert not problems, problems


@pytest.fixture
def scratch(lab: Lab) -> Iterator[Scratch]:
    s = Scratch(lab)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def h1(lab: Lab) -> Host:
    return lab.host(1)
