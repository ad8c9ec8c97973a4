"""Integration tier: real dockerd hosts built by pyoverlay.lab, driven with the docker CLI.

The lab (network namespace + mount namespace + dockerd + pyoverlay plugin per
host) is shared by the tests of one module and torn down at its end, also
when a test fails.  Each test creates its own networks and containers through
`scratch`, which removes them afterwards, so one failure does not leak into
the next test.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import pytest
from support import Scratch, require_root

from pyoverlay.lab.hosts import DOCKERD, Host, Lab


def require_docker() -> None:
    require_root()
    if shutil.which(DOCKERD) is None:
        if __import__("os").environ.get("CI") == "true":
            pytest.fail(f"{DOCKERD} is missing; scripts/install installs docker.io")
        pytest.skip("dockerd is not installed (scripts/install)")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
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
