"""gossip-scope: per-network replication vs every row to every host, simulated, same run.

Shape (issue 12's "1,000 hosts x 100 networks x 10 containers", scaled by
--hosts): H hosts, H/10 networks; every host runs 10 containers, spread
over 3 networks it picks at random, so a network spans about 30 hosts and
100 containers.  The same seed and the same publishes run twice:

* scoped: each host joins only its 3 networks (what the driver does);
* full:   the old behaviour: no network tables (GossipConfig.network_tables
          empty), every row to every host.

Reported per mode: rows stored per host (mean, max) and their bytes, bytes
and packets sent per host per second while all containers start (within
20 s) and in the quiet 20 s after, time until each row reached every host
that needs it (p50/p99), and ratios scoped/full.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import replace

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.node import GossipNode
from testing.sim import SimNetwork

CONTAINERS_PER_HOST = 10
NETS_PER_HOST = 3


def _plan(hosts: int, seed: int) -> tuple[list[list[str]], list[tuple[float, int, str, str]]]:
    """Each host's networks, and the publishes: (time, host, network, key)."""
    import random

    rng = random.Random(seed)
    nets = [str(5000 + i) for i in range(max(NETS_PER_HOST, hosts // 10))]
    member_of = [rng.sample(nets, NETS_PER_HOST) for _ in range(hosts)]
    writes = [
        (rng.random() * 20.0, h, rng.choice(member_of[h]), f"h{h}c{c}")
        for h in range(hosts)
        for c in range(CONTAINERS_PER_HOST)
    ]
    return member_of, sorted(writes)


def _run(hosts: int, scoped: bool, seed: int) -> dict[str, float]:
    member_of, writes = _plan(hosts, seed)
    all_nets = sorted({n for ns in member_of for n in ns})
    config = GossipConfig.lan() if scoped else replace(GossipConfig.lan(), network_tables=())
    sim = SimNetwork(seed=seed, loss=0.05, config=config)
    nodes = [sim.add_node(f"n{i}") for i in range(hosts)]
    for i, x in enumerate(nodes):
        for net in member_of[i]:
            x.join_network(sim.now, net)
    sim.join_all()
    sim.run_while(lambda: any(len(x.alive_members()) < hosts for x in nodes), limit=600)
    sim.run_for(5.0)

    def sent() -> tuple[int, int]:
        return (
            sum(s.bytes_out for s in sim.stats.values()),
            sum(s.packets_out for s in sim.stats.values()),
        )

    needs = {net: [nodes[h] for h in range(hosts) if net in member_of[h]] for net in all_nets}
    b0, p0 = sent()
    t0 = sim.now
    pending: dict[tuple[str, str], float] = {}
    took: list[float] = []
    queue = list(writes)
    while queue or (pending and sim.now - t0 < 80):
        while queue and t0 + queue[0][0] <= sim.now:
            _, h, net, key = queue.pop(0)
            sim.publish(nodes[h], f"peer/{net}", key, {"ip": "10.0.0.2", "mac": "02:42"})
            pending[(net, key)] = sim.now
        sim.run_for(0.05)
        for net, key in [
            k for k in pending if all((f"peer/{k[0]}", k[1]) in x.table.rows for x in needs[k[0]])
        ]:
            took.append(sim.now - pending.pop((net, key)))
    b1, p1 = sent()
    loaded_s = sim.now - t0
    sim.run_for(20.0)
    b2, p2 = sent()
    stored = [sum(1 for (s, _) in x.table.rows if s.startswith("peer/")) for x in nodes]
    stored_bytes = [_row_bytes(x) for x in nodes]
    took.sort()
    return {
        "rows_per_host_mean": round(statistics.mean(stored), 1),
        "rows_per_host_max": max(stored),
        "row_kib_per_host_mean": round(statistics.mean(stored_bytes) / 1024, 1),
        "kb_host_s_loaded": round((b1 - b0) / hosts / loaded_s / 1000, 2),
        "pkts_host_s_loaded": round((p1 - p0) / hosts / loaded_s, 1),
        "kb_host_s_quiet": round((b2 - b1) / hosts / 20.0 / 1000, 2),
        "p50_ms": round(statistics.median(took) * 1000),
        "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))] * 1000),
        "missing": len(pending),
    }


def _row_bytes(node: GossipNode) -> int:
    return sum(
        len(json.dumps(r.wire(0.0), separators=(",", ":")))
        for (s, _), r in node.table.rows.items()
        if s.startswith("peer/")
    )


def run(report: Callable[..., None], hosts: int = 200) -> None:
    scoped = _run(hosts, True, seed=hosts)
    full = _run(hosts, False, seed=hosts)
    name = f"gossip-scope-{hosts}"
    shape = f"{hosts} hosts, {max(NETS_PER_HOST, hosts // 10)} networks, 10 containers/host"
    report(f"{name}-scoped", shape=shape, loss="5%", **scoped)
    report(f"{name}-full", shape=shape, loss="5%", **full)
    report(
        f"{name}-ratio",
        rows_scoped_vs_full=round(scoped["rows_per_host_mean"] / full["rows_per_host_mean"], 3),
        bytes_loaded_scoped_vs_full=round(scoped["kb_host_s_loaded"] / full["kb_host_s_loaded"], 3),
        bytes_quiet_scoped_vs_full=round(scoped["kb_host_s_quiet"] / full["kb_host_s_quiet"], 3),
        p99_scoped_vs_full=round(scoped["p99_ms"] / max(1, full["p99_ms"]), 2),
    )
