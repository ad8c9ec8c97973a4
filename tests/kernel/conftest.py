"""Kernel tier: the real adapters in a throwaway network + mount namespace, which
scripts/test-kernel makes (and marks with PYOVERLAY_KERNEL_TIER=1). Outside it these
tests skip, except in CI (CI=true), where the tier must run: there it is an error."""

from __future__ import annotations

import os
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from kernelkit import UNDERLAY_IP, ip, ipj
from support import require_root

from pyoverlay.driver.core.model import Underlay
from pyoverlay.driver.kernel.links import PyrouteKernel


@pytest.fixture(autouse=True)
def throwaway_namespace() -> None:
    require_root()
    if os.environ.get("PYOVERLAY_KERNEL_TIER") != "1":
        why = "run through scripts/test-kernel (needs a private netns and /run/netns)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the kernel tier must run in CI: {why}")
        pytest.skip(why)


@pytest.fixture
def underlay(prefix: str):
    """A veth in the throwaway host namespace carrying the underlay address."""
    ip("link", "add", f"{prefix}u0", "mtu", "1500", "type", "veth", "peer", "name", f"{prefix}u1")
    ip("addr", "add", f"{UNDERLAY_IP}/24", "dev", f"{prefix}u0")
    ip("link", "set", f"{prefix}u0", "up")
    ip("link", "set", f"{prefix}u1", "up")
    yield Underlay(IPv4Address(UNDERLAY_IP), 4789, 1500)
    subprocess.run(["ip", "link", "del", f"{prefix}u0"], check=False)


@pytest.fixture
async def kernel():
    k = PyrouteKernel()
    yield k
    await k.close()
    for name in Path("/run/netns").iterdir():
        if name.name.startswith("1-"):
            # VTEPs first: namespace destruction is asynchronous and would keep the VNI busy
            for link in ipj("-n", name.name, "link"):
                if str(link["ifname"]).startswith("pvx"):
                    ip("-n", name.name, "link", "del", str(link["ifname"]))
            ip("netns", "del", name.name)
