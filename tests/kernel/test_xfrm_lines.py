"""The xfrm policy lines the IPsec keeper writes, through the real iproute2 and kernel,
where /etc/protocols is missing, as in the managed plugin's rootfs: there a protocol name
("proto udp") fails with "PROTO value is invalid", which left every encrypted network of
a managed plugin without its VXLAN policies (found by the mesh benchmark in the VM)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from pyoverlay.driver.kernel.xfrm import Xfrm
from pyoverlay.driver.secure import sa

pytestmark = pytest.mark.kernel
A, B, C = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), IPv4Address("192.0.2.3")


@pytest.fixture
def no_protocols_file() -> Iterator[None]:
    """/etc/protocols hidden (the tier's mount namespace is private), back afterwards."""
    # (the tier's autouse fixture skips outside scripts/test-kernel's `unshare --mount`)
    subprocess.run(["mount", "--bind", "/dev/null", "/etc/protocols"], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "/etc/protocols"], check=True)


async def test_policies_apply_and_read_back_without_etc_protocols(no_protocols_file: None) -> None:
    named = subprocess.run(
        ["ip", "xfrm", "policy", "add", "dir", "out", "src", f"{A}/32", "dst", f"{C}/32",
         "proto", "udp", "dport", "9"], capture_output=True, text=True,
    )  # fmt: skip
    assert "PROTO value is invalid" in named.stderr  # what the names did there
    x = Xfrm()
    lines = [
        sa.policy_line("update", A, B, 4789),
        sa.policy_line("update", A, C, sa.MESH_PORT),
    ]
    try:
        assert await x.batch(lines) == []
        assert sorted(await x.policies()) == [(A, B, 4789), (A, C, sa.MESH_PORT)]
        deletes = [sa.policy_line("delete", A, B, 4789), sa.policy_line("delete", A, C, 0)]
        assert await x.batch(deletes) == []
        assert await x.policies() == []
    finally:
        subprocess.run(["ip", "xfrm", "policy", "flush"], check=False)
