"""Dual stack on the real kernel: a container's IPv6 neighbour solicitation is answered by
the VTEP's proxy from the entries pyoverlay programs, so ping6 crosses the VXLAN.

Host A is the kernel tier's throwaway namespace, built by the real adapter exactly as the
plugin builds a network (br0 with both gateways, the VTEP) and programmed through
`apply_peer_ops`. Host B is a hand-built VTEP in a namespace of its own, on the same
underlay: the other side of the wire, as `ip` would make it. No flood entry exists
anywhere, so a solicitation that the proxy did not answer would go nowhere.
"""

from __future__ import annotations

import subprocess
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest
from kernelkit import UNDERLAY_IP, ip, ipj

from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec, Underlay
from pyoverlay.driver.core.ops import ReplaceFdb, ReplaceNeigh
from pyoverlay.driver.kernel.links import PyrouteKernel
from pyoverlay.driver.overlay import peers, plan
from pyoverlay.driver.overlay.base import apply_all

pytestmark = pytest.mark.kernel
NID = "c6c6c6c6c6c6" + "0" * 52
EID = "e6e6e6e6e6e6" + "0" * 52
VNI = 4266
MAC_A, MAC_B = "02:42:0a:36:00:02", "02:42:0a:36:00:03"
A4, B4 = "10.54.0.2", "10.54.0.3"
A6, B6 = "fd00:54::2", "fd00:54::3"
HOST_B = "192.0.2.2"


def dual_stack() -> NetworkSpec:
    return NetworkSpec(
        NID,
        VNI,
        IPv4Network("10.54.0.0/24"),
        IPv4Interface("10.54.0.1/24"),
        1450,
        subnet6=IPv6Network("fd00:54::/64"),
        gateway6=IPv6Interface("fd00:54::1/64"),
    )


def container(ns: str, dev: str, mac: str, v4: str, v6: str) -> None:
    """What libnetwork does to a container's interface: both addresses, IPv6 without DAD."""
    ip("-n", ns, "link", "set", dev, "name", "eth0")
    ip("-n", ns, "link", "set", "eth0", "address", mac, "up")
    ip("-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
    ip("-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")


def ping(ns: str, target: str, family: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ping", family, "-c", "3", "-i", "0.2", "-W", "2", target],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_ipv6_crosses_the_vxlan_with_neighbour_solicitations_answered_by_the_proxy(
    kernel: PyrouteKernel,
    underlay: Underlay,
    prefix: str,
) -> None:
    net = dual_stack()
    ep = EndpointSpec(
        NID, EID, IPv4Interface(f"{A4}/24"), MAC_A, address6=IPv6Interface(f"{A6}/64")
    )
    ca, hb, cb = f"{prefix}ca", f"{prefix}hb", f"{prefix}cb"
    made: list[str] = []
    try:
        # host A: the network as the plugin makes it, a container on it
        await apply_all(kernel, plan.create_network(net, "node1", underlay))
        await apply_all(kernel, plan.join(net, ep))
        for ns in (ca, hb, cb):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "set", ep.container_ifname, "netns", ca)
        container(ca, ep.container_ifname, MAC_A, A4, A6)
        ns, vx = net.namespace, net.vxlan
        br0 = {
            (a["family"], a["local"], a["prefixlen"])
            for a in ipj("-n", ns, "addr", "show", "br0")[0]["addr_info"]
        }  # type: ignore[union-attr]
        assert {("inet", "10.54.0.1", 24), ("inet6", "fd00:54::1", 64)} <= br0
        assert (
            ipj("-n", ns, "-d", "link", "show", "br0")[0]["linkinfo"]["info_data"]["mcast_snooping"]
            == 0
        )  # type: ignore[index]

        # host B on the same underlay: a VTEP made by hand, with A's container in its tables
        ip("link", "set", "%su1" % prefix, "netns", hb)
        ip("-n", hb, "addr", "add", f"{HOST_B}/24", "dev", f"{prefix}u1")
        ip("-n", hb, "link", "set", f"{prefix}u1", "up")
        ip("-n", hb, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", hb, "link", "add", "vx", "type", "vxlan", "id", str(VNI), "local", HOST_B,
           "dstport", "4789", "nolearning", "proxy")  # fmt: skip
        ip("-n", hb, "link", "set", "vx", "master", "br0", "mtu", "1450", "up")
        ip("-n", hb, "link", "set", "br0", "up")
        ip("-n", hb, "link", "add", "vb", "mtu", "1450", "type", "veth", "peer", "name", "vbc")
        ip("-n", hb, "link", "set", "vb", "master", "br0", "up")
        ip("-n", hb, "link", "set", "vbc", "netns", cb)
        container(cb, "vbc", MAC_B, B4, B6)
        subprocess.run(["bridge", "-n", hb, "fdb", "append", MAC_A, "dev", "vx", "dst",
                        UNDERLAY_IP, "self", "permanent"], check=True)  # fmt: skip
        for addr in (A4, A6):
            ip("-n", hb, "neigh", "replace", addr, "lladdr", MAC_A, "dev", "vx", "nud", "permanent")

        # an address no entry names does not resolve: nothing but the proxy answers (pinging
        # B6 itself now would leave a FAILED neighbour in the container for a while)
        assert ping(ca, "fd00:54::99", "-6").returncode != 0
        unanswered = ip("-n", ca, "-6", "neigh", "show", "fd00:54::99")
        assert "FAILED" in unanswered or "INCOMPLETE" in unanswered, unanswered  # it asked

        # host A learns B's row (what the gossip table would give) and programs it in bulk
        row = peers.row_value(IPv4Address(B4), MAC_B, IPv4Address(HOST_B), ip6=IPv6Address(B6))
        remote = peers.RemoteEndpoint.from_row("eb", row, (1, "hb"))
        assert remote is not None
        want = peers.desired([remote], underlay.address)
        ops = peers.diff(ns, vx, await kernel.peer_entries(ns, vx), want)
        assert ops == [
            ReplaceFdb(ns, vx, MAC_B, IPv4Address(HOST_B)),
            ReplaceNeigh(ns, vx, IPv4Address(B4), MAC_B),
            ReplaceNeigh(ns, vx, IPv6Address(B6), MAC_B),
        ]
        assert await kernel.apply_peer_ops(ops) == []
        assert await kernel.peer_entries(ns, vx) == want  # read back: both families
        assert peers.diff(ns, vx, await kernel.peer_entries(ns, vx), want) == []
        shown = ip("-n", ns, "-6", "neigh", "show", "dev", vx)
        assert f"{B6} lladdr {MAC_B} PERMANENT" in shown, shown

        for target, family in ((B6, "-6"), (B4, "-4")):
            got = ping(ca, target, family)
            assert got.returncode == 0, got.stdout + got.stderr
        back = ping(cb, A6, "-6")  # and the other way
        assert back.returncode == 0, back.stdout + back.stderr
        # A's container learnt B through a solicited advertisement from the proxy
        learnt = ip("-n", ca, "-6", "neigh", "show", B6)
        assert MAC_B in learnt, learnt

        # gone from the table: the pruning diff deletes both families' entries
        ops = peers.diff(ns, vx, await kernel.peer_entries(ns, vx), peers.PeerEntries())
        assert await kernel.apply_peer_ops(ops) == []
        assert await kernel.peer_entries(ns, vx) == peers.PeerEntries()
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        await apply_all(kernel, plan.delete_network(net))


async def test_1000_ipv6_neighbours_in_bulk(
    kernel: PyrouteKernel,
    underlay: Underlay,
) -> None:
    net = dual_stack()
    await apply_all(kernel, plan.create_network(net, "node1", underlay))
    try:
        ns, vx = net.namespace, net.vxlan
        remotes = [
            peers.RemoteEndpoint(
                f"e{i}",
                IPv4Address(f"10.54.{i // 250 + 1}.{i % 250 + 2}"),
                f"02:42:0a:36:{i // 250:02x}:{i % 250:02x}",
                IPv4Address(f"192.0.2.{i % 50 + 2}"),
                (1, "n"),
                IPv6Address(f"fd00:54::1:{i:x}"),
            )
            for i in range(1000)
        ]
        want = peers.desired(remotes, underlay.address)
        assert len(want.neigh) == 2000
        ops = peers.diff(ns, vx, await kernel.peer_entries(ns, vx), want)
        assert await kernel.apply_peer_ops(ops) == []
        have = await kernel.peer_entries(ns, vx)
        assert have == want
        assert sum(1 for a in have.neigh if a.version == 6) == 1000
    finally:
        await apply_all(kernel, plan.delete_network(net))
