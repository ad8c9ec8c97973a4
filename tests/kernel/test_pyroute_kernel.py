"""The real kernel adapter, in a throwaway network + mount namespace.

scripts/test-kernel runs this file under `unshare --net --mount` with a
private tmpfs on /run/netns, so the "host namespace" here is a fresh one and
nothing touches the machine's network.  Each test builds what a user would
look at with `ip` and checks it: links, masters, MTUs, VXLAN settings.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from kernelkit import UNDERLAY_IP, ip, ipj

from pyoverlay.core.errors import KernelError, PyoverlayError
from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec, Underlay
from pyoverlay.driver.core.ops import (
    CreateNamespace,
    DeleteNamespace,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
)
from pyoverlay.driver.kernel.links import PyrouteKernel
from pyoverlay.driver.overlay import plan
from pyoverlay.driver.overlay.base import apply_all
from pyoverlay.driver.overlay.driver import OverlayDriver

pytestmark = pytest.mark.kernel


def bridge_fdb(ns: str, dev: str) -> list[dict[str, str]]:
    """`bridge -j fdb show dev DEV` in namespace NS."""
    out = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out or "[]"))


def our_veths() -> list[str]:
    return [str(e["ifname"]) for e in ipj("link") if str(e["ifname"]).startswith(("pyc", "pyv"))]


def spec(nid: str, vni: int = 4242, subnet: str = "10.50.0.0/24") -> NetworkSpec:
    net = IPv4Network(subnet)
    return NetworkSpec(nid, vni, net, IPv4Interface(f"{net.network_address + 1}/24"), 1450)


NID = "a1b2c3d4e5f6" + "0" * 52
EID = "e1e2e3e4e5e6" + "0" * 52


async def test_network_sandbox_matches_the_seed(kernel: PyrouteKernel, underlay: Underlay) -> None:
    net = spec(NID)
    await apply_all(kernel, plan.create_network(net, "node1", underlay))
    assert "1-a1b2c3d4e5" in ip("netns", "list")
    links = {entry["ifname"]: entry for entry in ipj("-n", net.namespace, "-d", "link")}
    br, vx = links["br0"], links[net.vxlan]
    assert br["mtu"] == 1450 and "UP" in br["flags"]
    assert br["ifalias"] == f"pyoverlay:node1:{NID}"
    info = vx["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local"]) == (4242, 4789, UNDERLAY_IP)
    assert info["learning"] is False and info["proxy"] is True
    assert vx["master"] == "br0" and vx["mtu"] == 1450
    addrs = ipj("-n", net.namespace, "-4", "addr", "show", "br0")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.50.0.1", 24)]
    # the VTEP's UDP socket stays in the host namespace (on the underlay)
    assert ":4789" in subprocess.run(["ss", "-uln"], capture_output=True, text=True).stdout
    assert "lo" in {e["ifname"] for e in ipj("-n", net.namespace, "link") if "UP" in e["flags"]}


async def test_every_op_is_idempotent(kernel: PyrouteKernel, underlay: Underlay) -> None:
    net = spec(NID)
    ep = EndpointSpec(NID, EID, IPv4Interface("10.50.0.2/24"), "02:42:0a:32:00:02", joined=True)
    ops = plan.create_network(net, "node1", underlay) + plan.join(net, ep)
    assert [await kernel.apply(op) for op in ops] == [True, True, True, True]
    assert [await kernel.apply(op) for op in ops] == [False, False, False, False]
    host_end = ipj("link", "show", ep.container_ifname)[0]
    assert host_end["address"] == "02:42:0a:32:00:02" and host_end["mtu"] == 1450
    overlay_end = ipj("-n", net.namespace, "link", "show", ep.overlay_ifname)[0]
    assert overlay_end["master"] == "br0" and overlay_end["mtu"] == 1450
    for op in plan.delete_endpoint(net.namespace, ep):
        await kernel.apply(op)
    for op in plan.delete_endpoint(net.namespace, ep):
        assert await kernel.apply(op) is False
    assert not our_veths()
    await apply_all(kernel, plan.delete_network(net))
    assert await kernel.apply(DeleteNamespace(net.namespace)) is False
    assert "1-a1b2c3d4e5" not in ip("netns", "list")


async def test_vni_clash_is_refused_with_the_kernel_text_and_rolled_back(
    kernel: PyrouteKernel, underlay: Underlay
) -> None:
    first = spec(NID, vni=77)
    second = spec("b" * 64, vni=77, subnet="10.51.0.0/24")
    await apply_all(kernel, plan.create_network(first, "node1", underlay))
    with pytest.raises(PyoverlayError) as err:
        await apply_all(kernel, plan.create_network(second, "node1", underlay))
    assert "VNI" in str(err.value) and "rolled back" in str(err.value)
    assert "1-bbbbbbbbbb" not in ip("netns", "list")
    assert not [e for e in ipj("link") if e["ifname"].startswith("pvx")]


async def test_failed_veth_leaves_nothing(kernel: PyrouteKernel, underlay: Underlay) -> None:
    net = spec(NID)
    await apply_all(kernel, [CreateNamespace(net.namespace)])
    veth = EnsureVeth("pycx", net.namespace, "pyvx", 1450, "02:42:00:00:00:01", "br0")
    with pytest.raises(PyoverlayError, match="bridge br0 is missing.*rolled back"):
        await apply_all(kernel, [veth])
    assert not our_veths()
    assert not [e for e in ipj("-n", net.namespace, "link") if e["ifname"] == "pyvx"]


async def test_vxlan_with_wrong_settings_is_recreated(
    kernel: PyrouteKernel, underlay: Underlay
) -> None:
    net = spec(NID)
    await apply_all(kernel, plan.create_network(net, "node1", underlay))
    ip("-n", net.namespace, "link", "set", net.vxlan, "nomaster")
    ip("-n", net.namespace, "link", "set", net.vxlan, "mtu", "1300")
    ops = await OverlayDriverFor(kernel, underlay, net).plan_reconcile()
    # a bridge without ports falls back to MTU 1500: both drifts are found
    assert [type(o) for o in ops] == [EnsureBridge, EnsureVxlan]
    for op in ops:
        await kernel.apply(op)
    vx = ipj("-n", net.namespace, "link", "show", net.vxlan)[0]
    assert vx["master"] == "br0" and vx["mtu"] == 1450
    assert ipj("-n", net.namespace, "link", "show", "br0")[0]["mtu"] == 1450
    assert await OverlayDriverFor(kernel, underlay, net).plan_reconcile() == []


async def test_reconcile_rebuilds_and_sweeps_only_its_own(
    kernel: PyrouteKernel, underlay: Underlay, tmp_path: Path
) -> None:
    mine, gone, foreign = (
        spec(NID),
        spec("c" * 64, 11, "10.52.0.0/24"),
        spec("d" * 64, 12, "10.53.0.0/24"),
    )
    await apply_all(kernel, plan.create_network(gone, "node1", underlay))
    await apply_all(kernel, plan.create_network(foreign, "node2", underlay))
    driver = OverlayDriverFor(kernel, underlay, mine, state=tmp_path)
    ops, errors = await driver.reconcile()
    assert not errors
    names = ip("netns", "list")
    assert mine.namespace in names  # rebuilt: the kernel lacked it
    assert gone.namespace not in names  # node1's, owned by no network: swept
    assert foreign.namespace in names  # another node's: left alone
    again, _ = await driver.reconcile()
    assert again == []


async def test_underlay_is_derived_from_the_default_route(
    kernel: PyrouteKernel, underlay: Underlay, prefix: str
) -> None:
    ip("route", "add", "default", "via", "192.0.2.254")
    info = await kernel.underlay(None)
    assert (str(info.address), info.ifname, info.mtu) == (UNDERLAY_IP, f"{prefix}u0", 1500)
    with pytest.raises(PyoverlayError, match="198.51.100.7 is not an address of any interface"):
        await kernel.underlay(IPv4Address("198.51.100.7"))


async def test_kernel_errors_carry_op_object_and_errno(
    kernel: PyrouteKernel, underlay: Underlay
) -> None:
    with pytest.raises(KernelError) as err:
        await kernel.apply(
            EnsureVeth("pycz", "1-nonexisten", "pyvz", 1450, "02:00:00:00:00:01", "br0")
        )
    assert (err.value.op, err.value.obj, err.value.errno) == ("open namespace", "1-nonexisten", 2)
    net = spec(NID)
    await apply_all(kernel, [CreateNamespace(net.namespace)])
    with pytest.raises(KernelError) as err:
        await kernel.apply(
            EnsureVeth("pyc" + "z" * 20, net.namespace, "pyvz", 1450, "02:00:00:00:00:01", "br0")
        )
    assert err.value.op == "enslave veth" or err.value.errno == 34  # ERANGE: name too long


def OverlayDriverFor(
    kernel: PyrouteKernel, underlay: Underlay, net: NetworkSpec, state: Path | None = None
) -> OverlayDriver:
    import tempfile

    d = OverlayDriver(
        kernel, (state or Path(tempfile.mkdtemp())) / "driver.json", "node1", underlay
    )
    d.networks = {net.network_id: net}
    d.eager = True  # the network's sandbox is wanted without a local endpoint
    return d


async def test_fdb_and_neighbour_entries_against_the_real_kernel(
    kernel: PyrouteKernel, underlay: Underlay
) -> None:
    """replace / list / change / delete of the entries peer programming makes, next to
    entries the kernel (or someone else) owns on the same VTEP: those are never listed as
    ours, so no sync deletes them."""
    from pyoverlay.driver.core.ops import DeleteFdb, DeleteNeigh, ReplaceFdb, ReplaceNeigh
    from pyoverlay.driver.overlay import peers

    net = spec(NID)
    await apply_all(kernel, plan.create_network(net, "node1", underlay))
    ns, vx = net.namespace, net.vxlan
    mac, peer_ip, vtep = "02:42:0a:32:00:07", IPv4Address("10.50.0.7"), IPv4Address("192.0.2.7")
    # not ours: the default flood entry (all-zero MAC), a bridge-learnt style entry without
    # a destination, and a dynamic (non-permanent) neighbour
    subprocess.run(
        ["bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", "192.0.2.99"],
        check=True,
    )
    subprocess.run(
        ["bridge", "-n", ns, "fdb", "add", "02:aa:bb:cc:dd:ee", "dev", vx, "master", "static"],
        check=True,
    )
    ip(
        "-n",
        ns,
        "neigh",
        "add",
        "10.50.0.99",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        vx,
        "nud",
        "reachable",
    )
    assert await kernel.peer_entries(ns, vx) == peers.PeerEntries()

    assert await kernel.apply(ReplaceFdb(ns, vx, mac, vtep)) is True
    assert await kernel.apply(ReplaceNeigh(ns, vx, peer_ip, mac)) is True
    assert await kernel.apply(ReplaceFdb(ns, vx, mac, vtep)) is True  # replace: idempotent
    got = await kernel.peer_entries(ns, vx)
    assert got.fdb == {mac: vtep} and got.neigh == {peer_ip: mac}
    fdb = bridge_fdb(ns, vx)
    ours = [e for e in fdb if e["mac"] == mac]
    assert (
        ours and ours[0]["dst"] == "192.0.2.7" and "permanent" in ours[0].get("state", "permanent")
    )
    neigh = ipj("-n", ns, "neigh", "show", "dev", vx)
    assert {"dst": "10.50.0.7", "lladdr": mac} in [
        {k: e[k] for k in ("dst", "lladdr")} for e in neigh
    ]

    # the container moved to another host: the state-based diff moves the entry
    moved = peers.PeerEntries(fdb={mac: IPv4Address("192.0.2.8")}, neigh={peer_ip: mac})
    ops = peers.diff(ns, vx, got, moved)
    assert ops == [DeleteFdb(ns, vx, mac, vtep), ReplaceFdb(ns, vx, mac, IPv4Address("192.0.2.8"))]
    for op in ops:
        await kernel.apply(op)
    assert (await kernel.peer_entries(ns, vx)).fdb == {mac: IPv4Address("192.0.2.8")}

    # gone from the table: a full (pruning) sync deletes ours and nothing else
    for op in peers.diff(ns, vx, await kernel.peer_entries(ns, vx), peers.PeerEntries()):
        assert await kernel.apply(op) is True
    assert await kernel.apply(DeleteFdb(ns, vx, mac, vtep)) is False  # already gone
    assert await kernel.apply(DeleteNeigh(ns, vx, peer_ip)) is False
    assert await kernel.peer_entries(ns, vx) == peers.PeerEntries()
    left = subprocess.run(
        ["bridge", "-n", ns, "fdb", "show", "dev", vx], capture_output=True, text=True
    ).stdout
    assert "00:00:00:00:00:00 dst 192.0.2.99" in left and "02:aa:bb:cc:dd:ee" in left
    assert "10.50.0.99" in ip("-n", ns, "neigh", "show", "dev", vx)
    await apply_all(kernel, plan.delete_network(net))


async def test_5000_remote_endpoints_in_bulk_with_errors_per_entry(
    kernel: PyrouteKernel, underlay: Underlay
) -> None:
    """Issue 12: a restart programs 5,000 remote endpoints (10,000 FDB + ARP entries) in
    bulk; what `bridge fdb`/`ip neigh` list is exactly that; a bad entry fails alone with
    its own error; deleting all of them (and one that is not there) leaves nothing."""
    from pyoverlay.driver.core.ops import DeleteFdb, ReplaceFdb
    from pyoverlay.driver.overlay import peers

    net = spec(NID, subnet="10.64.0.0/16")
    await apply_all(kernel, plan.create_network(net, "node1", underlay))
    ns, vx = net.namespace, net.vxlan
    want = peers.PeerEntries(
        fdb={
            f"02:42:0a:40:{i >> 8:02x}:{i & 255:02x}": IPv4Address("192.0.2.10") + i % 50
            for i in range(5000)
        },
        neigh={
            IPv4Address("10.64.0.0") + 2 + i: f"02:42:0a:40:{i >> 8:02x}:{i & 255:02x}"
            for i in range(5000)
        },
    )
    ops = peers.diff(ns, vx, peers.PeerEntries(), want)
    assert len(ops) == 10_000
    bad = ReplaceFdb(ns, vx, "01:00:5e:00:00:01", IPv4Address("192.0.2.1"))  # multicast: refused
    failed = await kernel.apply_peer_ops([*ops[:5000], bad, *ops[5000:]])
    assert [e.op for e in failed if isinstance(e, KernelError)] == [str(bad)], failed
    assert await kernel.peer_entries(ns, vx) == want
    shown = json.loads(ip("-n", ns, "-j", "neigh", "show", "dev", vx) or "[]")
    assert len([e for e in shown if "PERMANENT" in e.get("state", [])]) == 5000
    fdb = bridge_fdb(ns, vx)
    assert {e["mac"]: e["dst"] for e in fdb if "dst" in e} == {
        m: str(d) for m, d in want.fdb.items()
    }

    gone = peers.diff(ns, vx, want, peers.PeerEntries())
    extra = DeleteFdb(ns, vx, "02:00:00:00:00:02", IPv4Address("192.0.2.9"))  # never there
    assert await kernel.apply_peer_ops([*gone, extra]) == []
    assert await kernel.peer_entries(ns, vx) == peers.PeerEntries()
    assert await kernel.apply(ReplaceFdb(ns, vx, "02:00:00:00:00:03", IPv4Address("192.0.2.3")))
