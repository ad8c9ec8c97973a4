"""Benchmark `vips`: service VIPs in nftables, on this machine's kernel (no Docker needed).

A "container" namespace holds pyoverlay's VIP table; a "tasks" namespace behind a
veth holds the task addresses.  Measured in one run, side by side:
  * programming 100 services x 10 tasks from nothing (one transaction), and one
    task change at that size (the driver's whole step: read the table, plan,
    apply), the same at 1,000 services: the change should not grow with services;
  * TCP connection setup (connect + first byte) and iperf3 throughput through a
    VIP vs straight to a task address, alternating rounds, with the same table.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from lab.measure import side_by_side
from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.servicelb import ruleset as vips

TASK_BASE = IPv4Address("10.77.0.10")
VIP_BASE = IPv4Address("10.77.128.0")


def sh(*cmd: str, timeout: float = 120) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def table(n_services: int, tasks: int) -> vips.Vips:
    return {
        VIP_BASE + i: vips.Service(f"s{i}", tuple(TASK_BASE + t for t in range(tasks)))
        for i in range(n_services)
    }


async def sync(nft: Nft, ns: Path, want: vips.Vips, have: vips.Programmed | None) -> float:
    """The driver's event-driven step for one container: plan against what it last
    applied, apply (one transaction). Seconds."""
    t0 = time.perf_counter()
    await nft.apply(ns, vips.plan(have, want))
    return time.perf_counter() - t0


async def verify(nft: Nft, ns: Path) -> float:
    """The reconciler's extra step: read the whole table back and parse it. Seconds."""
    t0 = time.perf_counter()
    vips.parse(await nft.list_table(ns, vips.FAMILY, vips.TABLE))
    return time.perf_counter() - t0


async def programming(nft: Nft, ns: Path, n_services: int) -> dict[str, float]:
    await nft.apply(ns, vips.plan(vips.parse(await nft.list_table(ns, "ip", "pyoverlay")), {}))
    want = table(n_services, 10)
    full = await sync(nft, ns, want, None)
    changes, reads = [], []
    for k in range(20):
        have = vips.Programmed(True, dict(want))
        svc = VIP_BASE + (k * 37) % n_services
        old = want[svc]
        backends = old.backends[1:] if k % 2 == 0 else (*old.backends, TASK_BASE + 10)
        want[svc] = vips.Service(old.name, tuple(sorted(set(backends))))
        changes.append(await sync(nft, ns, want, have))
        reads.append(await verify(nft, ns))
    return {
        "from_nothing_ms": round(full * 1000, 1),
        "one_change_p50_ms": round(statistics.median(changes) * 1000, 2),
        "one_change_max_ms": round(max(changes) * 1000, 2),
        "reconcile_read_ms": round(statistics.median(reads) * 1000, 1),
    }


def run(report: Callable[..., None]) -> None:
    prefix = "bv" + secrets.token_hex(2)
    c, s = f"{prefix}c", f"{prefix}s"
    nft = Nft()
    try:
        for ns in (c, s):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", s)
        sh("ip", "-n", c, "addr", "add", "10.77.0.1/16", "dev", "eth0")
        for t in range(11):
            sh("ip", "-n", s, "addr", "add", f"{TASK_BASE + t}/16", "dev", "eth0")
        for ns in (c, s):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        path = Path("/run/netns") / c
        sizes = {n: asyncio.run(programming(nft, path, n)) for n in (100, 1000)}
        for n, got in sizes.items():
            report(f"vips-program-{n}x10", **got)
        report(  # a change should not grow with the number of services (kube-proxy's goal)
            "vips-change-growth",
            one_change_p50_1000_vs_100=round(
                sizes[1000]["one_change_p50_ms"] / sizes[100]["one_change_p50_ms"], 2
            ),
            one_change_p50_vs_from_nothing_100=round(
                sizes[100]["one_change_p50_ms"] / sizes[100]["from_nothing_ms"], 3
            ),
        )
        # the data path: 100 services x 1 task each, the measured VIP one of them
        want = {VIP_BASE + i: vips.Service(f"s{i}", (TASK_BASE,)) for i in range(100)}
        asyncio.run(sync(nft, path, want, None))
        setup, gbps = vip_vs_direct(
            ["ip", "netns", "exec", s], ["ip", "netns", "exec", c], VIP_BASE + 50, TASK_BASE
        )
        report("vips-setup", **setup)
        report("vips-throughput", **gbps)
    finally:
        nft.close()
        for ns in (c, s):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def vip_vs_direct(
    server: list[str], client: list[str], vip: IPv4Address, task: IPv4Address, rounds: int = 10
) -> tuple[dict[str, object], dict[str, object]]:
    """Connection setup and throughput from the client's namespace to the VIP vs to the
    task address, alternating rounds (`server`/`client` enter the two namespaces)."""
    return side_by_side(
        server, ("vip", (client, str(vip))), ("direct", (client, str(task))), rounds
    )
