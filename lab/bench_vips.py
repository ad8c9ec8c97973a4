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
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from lab.measure import iperf_gbps
from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.servicelb import ruleset as vips

TASK_BASE = IPv4Address("10.77.0.10")
VIP_BASE = IPv4Address("10.77.128.0")
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(512); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"x"); c.close()
"""
CLIENT = """
import socket, sys, time
target, n = sys.argv[1], int(sys.argv[2])
t = []
for _ in range(n):
    t0 = time.perf_counter()
    c = socket.create_connection((target, 7000)); c.recv(1); c.close()
    t.append(time.perf_counter() - t0)
t.sort(); print(t[len(t) // 2])
"""


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
    server: list[str], client: list[str], vip: IPv4Address, task: IPv4Address, rounds: int = 5
) -> tuple[dict[str, object], dict[str, object]]:
    """Connection setup (median of 500 connect + first byte) and iperf3 throughput from
    the client's namespace to the VIP vs to the task address, alternating rounds.
    `server`/`client` are the commands that enter the two namespaces."""
    srv = subprocess.Popen(
        [*server, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        setup: dict[str, list[float]] = {"vip": [], "direct": []}
        gbps: dict[str, list[float]] = {"vip": [], "direct": []}
        for r in range(rounds):
            order = [("vip", vip), ("direct", task)]
            for kind, target in order if r % 2 == 0 else order[::-1]:
                out = sh(*client, sys.executable, "-c", CLIENT, str(target), "500")
                setup[kind].append(float(out))
                gbps[kind].append(iperf_gbps(server, client, str(target), 5301, seconds=3))
    finally:
        srv.kill()
        srv.wait()
        if srv.stdout is not None:
            srv.stdout.close()
    v_s, d_s = statistics.median(setup["vip"]), statistics.median(setup["direct"])
    v_t, d_t = statistics.median(gbps["vip"]), statistics.median(gbps["direct"])
    return (
        {
            "vip_runs_us": [round(x * 1e6) for x in setup["vip"]],
            "direct_runs_us": [round(x * 1e6) for x in setup["direct"]],
            "vip_us": round(v_s * 1e6, 1),
            "direct_us": round(d_s * 1e6, 1),
            "ratio": round(v_s / d_s, 3),
        },
        {
            "vip_gbps": round(v_t, 2),
            "direct_gbps": round(d_t, 2),
            "ratio": round(v_t / d_t, 3),
            "vip_runs": [round(x, 1) for x in gbps["vip"]],
            "direct_runs": [round(x, 1) for x in gbps["direct"]],
        },
    )
