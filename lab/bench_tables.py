"""large-tables: FDB/ARP programming at 5,000 remote endpoints, on the real kernel.

Runs in a throwaway network + mount namespace (`unshare`, as the kernel test
tier), with the real PyrouteKernel and OverlayDriver, rows from a
LocalDirectory standing in for the gossip table:

* program: the sandboxes exist, their entries do not: the time the start-up
  reconcile takes to program 5,000 endpoints (10,000 entries), next to the
  same entries one `kernel.apply` at a time (a request and its ACK each), as
  a ratio; and after a host reboot (no namespace at all: sandboxes too);
* steady reconcile: CPU seconds of one periodic reconcile when nothing
  changed (read back and compare), as % of a core at the 10 s interval;
* the same for 50 networks x 100 endpoints.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from pyoverlay.driver.core.directory import LocalDirectory
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec, Underlay
from pyoverlay.driver.core.ops import PeerOp
from pyoverlay.driver.kernel.links import PyrouteKernel
from pyoverlay.driver.overlay import peers, plan
from pyoverlay.driver.overlay.base import apply_all
from pyoverlay.driver.overlay.driver import OverlayDriver

UNDERLAY = IPv4Address("192.0.2.1")
INTERVAL = 10.0  # the default --reconcile-interval


def _network(i: int) -> NetworkSpec:
    subnet = IPv4Network(f"10.{100 + i}.0.0/16")
    nid = f"{i:04x}" + "b" * 60
    return NetworkSpec(nid, 5000 + i, subnet, IPv4Interface(f"{subnet[1]}/16"), 1450)


def _rows(d: LocalDirectory, net: NetworkSpec, size: int) -> None:
    for k in range(size):
        ip = net.subnet[10 + k]
        mac = f"02:42:{ip.packed.hex(':')}"
        row = peers.row_value(ip, mac, IPv4Address("192.0.3.0") + 1 + k % 200)
        d.put(peers.scope(net.vni), f"r{net.vni}-{k}", row, (1, "other"))


async def _driver(nets: int, size: int) -> tuple[OverlayDriver, PyrouteKernel]:
    kernel = PyrouteKernel()
    state = Path(tempfile.mkdtemp()) / "driver.json"
    d = OverlayDriver(kernel, state, "node1", Underlay(UNDERLAY, 4789, 1500), LocalDirectory())
    assert isinstance(d.directory, LocalDirectory)
    for i in range(nets):
        net = _network(i)
        d.networks[net.network_id] = net
        eid = f"{i:04x}" + "e" * 60
        ep = EndpointSpec(
            net.network_id, eid, IPv4Interface(f"{net.subnet[2]}/16"), "02:42:0:0:0:2"
        )
        d.endpoints[ep.endpoint_id] = ep  # a local endpoint: the sandbox is wanted
        _rows(d.directory, net, size)
    return d, kernel


async def _clear_entries(d: OverlayDriver, kernel: PyrouteKernel) -> list[PeerOp]:
    """Remove every FDB/ARP entry (in bulk); returns the ops that put them back."""
    back: list[PeerOp] = []
    for net in d.networks.values():
        have = await kernel.peer_entries(net.namespace, net.vxlan)
        assert not await kernel.apply_peer_ops(
            peers.diff(net.namespace, net.vxlan, have, PeerEntries())
        )
        back += await d.plan_peers(net)
    return back


async def _measure(nets: int, size: int) -> dict[str, float]:
    d, kernel = await _driver(nets, size)
    await d.reconcile()  # sandboxes and entries
    # a plugin that finds its VTEPs without entries (state kept, kernel lost them):
    # the start-up reconcile programs them all
    await _clear_entries(d, kernel)
    t0 = time.perf_counter()
    ops, errors = await d.reconcile()
    entries = time.perf_counter() - t0
    assert not errors and len(ops) == nets * size * 2, (len(ops), errors)
    # a host reboot: no sandbox at all; namespaces, VTEPs and entries
    for net in d.networks.values():
        await apply_all(kernel, plan.delete_network(net))
    t0 = time.perf_counter()
    ops, errors = await d.reconcile()
    cold = time.perf_counter() - t0
    assert not errors, errors
    # steady: nothing to change
    c0, t0 = time.process_time(), time.perf_counter()
    runs = 5
    for _ in range(runs):
        again, _ = await d.reconcile()
        assert again == [], again[:3]
    cpu = (time.process_time() - c0) / runs
    wall = (time.perf_counter() - t0) / runs
    # the same entries one `kernel.apply` (request, ACK) at a time
    t0 = time.perf_counter()
    for op in await _clear_entries(d, kernel):
        await kernel.apply(op)
    per_entry = time.perf_counter() - t0
    d.endpoints.clear()
    await d.reconcile()  # sweeps the sandboxes
    await kernel.close()
    return {
        "entries": nets * size * 2,
        "program_s": round(entries, 3),
        "per_entry_s": round(per_entry, 3),
        "program_vs_per_entry": round(entries / per_entry, 3),
        "reboot_s": round(cold, 3),
        "reconcile_cpu_ms": round(cpu * 1000, 1),
        "reconcile_wall_ms": round(wall * 1000, 1),
        "core_pct_at_10s": round(cpu / INTERVAL * 100, 2),
    }


def inside() -> None:
    """In the throwaway namespace: measure and print JSON."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "bt0", "type", "veth", "peer", "name", "bt1"], check=True)
    subprocess.run(["ip", "addr", "add", f"{UNDERLAY}/24", "dev", "bt0"], check=True)
    subprocess.run(["ip", "link", "set", "bt0", "up"], check=True)
    out = {
        "1x5000": asyncio.run(_measure(1, 5000)),
        "50x100": asyncio.run(_measure(50, 100)),
    }
    print(json.dumps(out))


def run(report: Callable[..., None]) -> None:
    script = (
        "mount --make-rprivate / && mkdir -p /run/netns && "
        "mount -t tmpfs pyoverlay-bench /run/netns && "
        f"exec {sys.executable} -m lab.bench_tables"
    )
    r = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-ec", script],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"large-tables failed: {r.stderr[-2000:]}")
    for shape, figures in json.loads(r.stdout.strip().splitlines()[-1]).items():
        report(f"large-tables-{shape}", **figures)


if __name__ == "__main__":
    inside()
