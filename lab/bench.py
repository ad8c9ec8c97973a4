"""Benchmarks: every figure is measured side by side with its reference in the same run.

    sudo scripts/bench [--only NAME,...] [--runs N]

single host (one lab host)
  join-latency     plugin-side CreateEndpoint+Join p50/p99, 100 each alternated: warm (another
                   endpoint keeps the sandbox) and sandbox setup (a host's first endpoint)
  run-time-1h      `docker run -d` on pyoverlay, on an --internal pyoverlay network (no
                   docker_gwbridge leg) and on the bridge driver, rotated (median + IQR);
                   the plugin's own time per run
  tcp-1h           container<->container TCP through pyoverlay's br0 vs through the bridge driver
two hosts
  reach            `docker run -d` returns on h1 -> h2's VTEP has the new container's entry,
                   from h2's kernel (median, min, max; how many after the return)
three hosts
  reach-3h         reach, watched on h2 and h3 (the later of the two), at least 20 runs
  run-time-2h      `docker run -d` on pyoverlay (cluster IPAM) vs the bridge driver
  tcp-2h           cross-host TCP, pyoverlay vs a hand-built VXLAN path on the same underlay,
                   and vs that path with Docker's DNS NAT rules; rounds rotated, median + IQR
  crash            a killed host's entries gone from the other; a 2 s stall is no false alarm
  restart-loss     kill -9 + restart 0.5 s later of the plugin on the sending, then the
                   receiving host, a container started on the other host meanwhile, during
                   a 20 ms ping across hosts; --runs times each, idle and with a busy loop
                   on every core; worst and total loss
  admission        cross-host TCP on a plain network with VXLAN admission (the guard table's
                   member-set check) on vs off, alternated, plugins restarted per switch
  ipv6             cross-host TCP over IPv6 vs over IPv4, same two containers of a dual-stack
                   network, alternated rounds (medians, every round's figure)
  hostile          20 unauthenticated TCP connections to a plugin's gossip port, each sending a
                   large header and 4 MiB, in a loop: plugin RSS growth, and `docker run -d`
                   during the attack vs before it (ratio)
  footprint        plugin RSS and CPU at idle (a network with a container on each host), with
                   default malloc arenas and MALLOC_ARENA_MAX=2; CPU with the default probe
                   interval vs --gossip-probe-interval 1, alternated (median + IQR);
                   RSS holding 5,000 rows; the
                   managed plugin (its own rootfs) idle beside dockerd's RSS, and what each
                   package it imports adds
swarm (two hosts, a real swarm, the managed plugin)
  swarm-reach      `docker service create` of a task on h2 -> it answers a ping from an
                   attachable container on h1: pyoverlay vs Docker's built-in overlay (median;
                   since 2026-12-05 h2 keeps a container on both networks, so neither
                   driver's figure includes h2's first-container sandbox setup any more);
                   and `docker run -d` of an attachable container on h1 -> h2's VTEP has its
                   entry (as reach), both drivers alternated
  swarm-vip        (runs with swarm-reach) TCP setup and throughput from h1 to a task on h2
                   through its VIP vs straight to the task
  mesh             a published port through a node without the task (the routing mesh) vs
                   straight to the task over the overlay: TCP setup and throughput
registry (two hosts and a lab registry)
  plugin-install   the plugin pushed to a registry, then `docker plugin install` on a host:
                   rootfs and pushed size, install time (--runs rounds); beside an older
                   build when given --plugin-before TAR (`scripts/build-plugin --tar`)
kernel only (no Docker)
  vips             service VIPs in nftables: programming 100 and 1,000 services x 10 tasks,
                   one task change at that size; TCP setup and throughput via a VIP vs direct
  ipsec-keeper     the IPsec keeper at 100 encrypted peers (simulated xfrm): SAs installed vs
                   their bound, a steady and a rotation sync, idle cost per minute vs before
simulation (pyoverlay's timings next to memberlist's published LAN timings)
  gossip-sim       200 and 1,000 nodes, 5% loss, a row every 0.5 s for 30 s: time until
                   every node has it (p50/p99/max), packets/node/s loaded and quiet,
                   live nodes declared dead
  gossip-quiet     10 simulated minutes of 200 quiet nodes at 5% loss: false dead declarations
  gossip-scope     per-network replication vs every row everywhere, same run: rows held,
                   bytes/packets per host, p99 to every host that needs a row (--hosts, 200)
kernel only, in a throwaway namespace
  large-tables     a restart programming 5,000 remote endpoints (and 50 networks x 100) in
                   bulk vs one entry per call; CPU of a periodic reconcile at that size
Machines here are noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address

from lab import bench_footprint, reach
from lab.hosts import IMAGE, PLUGIN, ROOT, Host, Lab, sh, wait_for
from lab.hosts import overlay_ip as ip_of
from lab.measure import cpu_hog, cpu_seconds, iperf_gbps, paired, rss_mib
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.membership import MemberEvent
from pyoverlay.cluster.node import GossipNode
from pyoverlay.driver.core.model import namespace_name
from pyoverlay.driver.secure.guard import GUARD_TABLE, MEMBERS_SET
from pyoverlay.plugin.admin import ADMIN_SOCKET

RESULTS: dict[str, object] = {}


def report(name: str, **values: object) -> None:
    RESULTS[name] = values
    text = "  ".join(f"{k}={v}" for k, v in values.items())
    print(f"{name:14} {text}", flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 1)


# -- single host ---------------------------------------------------------------------


def bench_join_latency(lab: Lab, runs: int) -> None:
    """CreateEndpoint + Join straight on the plugin's socket, two ways alternated:
    `warm`, another endpoint keeps the network's sandbox (what every container but a
    host's first on a network pays), and `cold`, the first endpoint on the host, which
    builds the namespace, br0, the VTEP and its entries (`sandbox setup`: a host's first
    container on a network, and every `docker run --rm` on a network with no other)."""
    import asyncio

    import aiohttp

    h = lab.host(1)
    nid = h.create_network("bench", "100.9.0.0/24")
    sock = str(h.plugins_dir / "pyoverlay.sock")

    async def run() -> dict[str, list[float]]:
        conn = aiohttp.UnixConnector(path=sock)
        out: dict[str, list[float]] = {"warm": [], "cold": [], "noop": []}
        async with aiohttp.ClientSession(connector=conn) as s:

            async def call(path: str, body: object) -> None:
                async with s.post(f"http://plugin{path}", data=json.dumps(body)) as r:
                    got = await r.json(content_type=None)
                    if "Err" in got:
                        raise RuntimeError(got)

            async def endpoint(i: int) -> str:
                eid = secrets.token_hex(32)
                body = {"NetworkID": nid, "EndpointID": eid,
                        "Interface": {"Address": f"100.9.0.{10 + i % 200}/24"}}  # fmt: skip
                await call("/NetworkDriver.CreateEndpoint", body)
                return eid

            async def gone(eid: str) -> None:
                await call("/NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})

            for i in range(runs):
                for kind in ("warm", "cold") if i % 2 == 0 else ("cold", "warm"):
                    keeper = await endpoint(250) if kind == "warm" else None
                    t0 = time.perf_counter()
                    eid = await endpoint(i)
                    await call("/NetworkDriver.Join",
                               {"NetworkID": nid, "EndpointID": eid, "SandboxKey": ""})  # fmt: skip
                    out[kind].append(time.perf_counter() - t0)
                    t1 = time.perf_counter()
                    await call("/Plugin.Activate", None)
                    out["noop"].append(time.perf_counter() - t1)
                    await call("/NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
                    await gone(eid)
                    if keeper is not None:
                        await gone(keeper)
        return out

    got = asyncio.run(run())
    h.docker("network", "rm", "bench")
    warm, cold, noop = got["warm"], got["cold"], got["noop"]
    report(
        "join-latency",
        calls=len(warm),
        warm_p50_ms=ms(statistics.median(warm)),
        warm_p99_ms=ms(pct(warm, 0.99)),
        sandbox_setup_p50_ms=ms(statistics.median(cold)),
        sandbox_setup_p99_ms=ms(pct(cold, 0.99)),
        activate_p50_ms=ms(statistics.median(noop)),
    )


def timed_runs(h: Host, network: str, runs: int, prefix: str) -> list[float]:
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        h.docker(
            "run", "-d", "--name", f"{prefix}{i}", "--network", network, IMAGE, "sleep", "3600"
        )
        out.append(time.perf_counter() - t0)
    return out


def remove(h: Host, names: list[str]) -> None:
    if names:
        h.docker("rm", "-f", *names, check=False, timeout=120)


def bench_run_time(lab: Lab, runs: int, name: str, subnet: str) -> None:
    """`docker run -d` on a pyoverlay network, on an `--internal` one (no docker_gwbridge
    leg: Docker adds that second endpoint to every container of an overlay network that
    reaches outside, its own overlay's too) and on the bridge driver, rotated each round;
    and the plugin's own time per run (its call timings)."""
    h = lab.host(1)
    for other in lab.hosts:
        other.create_network("ovl", subnet)
    a, b, rest = subnet.split(".", 2)
    internal = f"{a}.{int(b) + 100}.{rest}"  # 100.4.0.0/24 -> 100.104.0.0/24
    h.create_network("ovi", internal, "--internal")
    h.docker("network", "create", "-d", "bridge", "--subnet", "10.250.0.0/24", "brg")
    # a first container of each, not counted: the network's sandbox (pyoverlay) and the
    # bridge are made once per host, not per run (join-latency measures that apart)
    for net in ("ovl", "ovi", "brg"):
        timed_runs(h, net, 1, f"{net}w-")
    runs = max(runs, 20)  # single runs vary +-10 % here: a median needs rounds
    got: dict[str, list[float]] = {"ovl": [], "ovi": [], "brg": []}
    spent = plugin_seconds(h)
    for i in range(runs):  # rotate, so drift hits all alike
        for net in [*RUN_SIDES[i % 3 :], *RUN_SIDES[: i % 3]]:
            got[net] += [ms(x) for x in timed_runs(h, net, 1, f"{net}{i}-")]
    spent = plugin_seconds(h) - spent
    remove(h, [f"{n}{i}-0" for n in got for i in ["w", *range(runs)]])
    h.docker("network", "rm", "brg", "ovi")
    for other in lab.hosts:
        other.docker("network", "rm", "ovl")
    report(name, unit="ms", **paired("pyoverlay", got["ovl"], "bridge", got["brg"]))
    report(f"{name}-internal", unit="ms", **paired("internal", got["ovi"], "bridge", got["brg"]))
    report(f"{name}-plugin", plugin_call_ms_per_run=round(spent * 1000 / (2 * runs), 2))


RUN_SIDES = ("ovl", "ovi", "brg")


def plugin_seconds(h: Host) -> float:
    """The plugin's call time so far (the sum of its handlers' durations, waits such as an
    IPAM quorum round trip included: latency a `docker run` sees, not CPU)."""
    sock = str(h.state_dir / ADMIN_SOCKET)
    text = h.run("curl", "-sf", "--unix-socket", sock, "http://p/metrics").stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pyoverlay_call_seconds_sum")
    )


def in_container(h: Host, container: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{h.container_pid(container)}/ns/net"]


def iperf(
    server: tuple[Host, str], client: tuple[Host, str], target: str, seconds: int = 5
) -> float:
    """Container to container, iperf3 run in the containers' netns via nsenter."""
    return iperf_gbps(in_container(*server), in_container(*client), target, 5201, seconds)


def bench_tcp_1h(lab: Lab) -> None:
    h = lab.host(1)
    h.create_network("ovl", "100.8.0.0/24")
    h.docker("network", "create", "-d", "bridge", "--subnet", "10.249.0.0/24", "brg")
    for n in ("ovl", "brg"):
        for c in ("s", "c"):
            h.docker("run", "-d", "--name", f"{n}{c}", "--network", n, IMAGE, "sleep", "3600")
    ovl = iperf((h, "ovls"), (h, "ovlc"), ip_of(h, "ovls", "ovl"))
    brg = iperf((h, "brgs"), (h, "brgc"), ip_of(h, "brgs", "brg"))
    ovl2 = iperf((h, "ovls"), (h, "ovlc"), ip_of(h, "ovls", "ovl"))
    remove(h, ["ovls", "ovlc", "brgs", "brgc"])
    h.docker("network", "rm", "ovl", "brg")
    o = (ovl + ovl2) / 2
    report("tcp-1h", pyoverlay_gbps=round(o, 2), bridge_gbps=round(brg, 2), ratio=round(o / brg, 3))


# -- two hosts -------------------------------------------------------------------------


def bench_reach(lab: Lab, runs: int) -> None:
    """`docker run -d` on h1 returns -> every other host's VTEP has the new container's
    entry (read from their kernels, lab/reach.py); negative: before the run returned.
    The figure per run is the last host's."""
    h1, others = lab.host(1), lab.hosts[1:]
    nids = {h.name: h.create_network("ovl", "100.7.0.0/24") for h in lab.hosts}  # one per host
    for h in others:
        h.docker("run", "-d", "--name", "watcher", "--network", "ovl", IMAGE, "sleep", "3600")
    h1.docker("run", "-d", "--name", "warm", "--network", "ovl", IMAGE, "sleep", "3600")
    watches: list[reach.NeighWatch] = []
    try:
        for h in others:
            watches.append(reach.NeighWatch(h, f"/run/netns/{namespace_name(nids[h.name])}"))
        got = [reach.run_and_reach(h1, watches, "ovl", f"r{i}", IMAGE) for i in range(runs)]
    finally:
        for w in watches:
            w.close()
    remove(h1, ["warm"] + [f"r{i}" for i in range(runs)])
    for h in others:
        remove(h, ["watcher"])
    for h in lab.hosts:
        h.docker("network", "rm", "ovl")
    name = "reach" if len(lab.hosts) == 2 else f"reach-{len(lab.hosts)}h"
    report(name, **reach_figures([g for g in got if g is not None], runs))


def reach_figures(got: list[tuple[float, float]], runs: int) -> dict[str, object]:
    delays = [d for d, _ in got]
    if not delays:
        return {"runs": runs, "reached": 0}
    return {
        "runs": runs,
        "reached": len(delays),
        "after_return": sum(d >= 0 for d in delays),
        "median_ms": round(statistics.median(delays), 1),
        "min_ms": round(min(delays), 1),
        "max_ms": round(max(delays), 1),
        "run_median_ms": round(statistics.median(r for _, r in got), 1),
    }


def pair(lab: Lab, subnet: str, on_h1: str, on_h2: str) -> str:
    """Network "ovl" on every host, a container on h1 and one on h2; h1's overlay address."""
    h1, h2 = lab.host(1), lab.host(2)
    for h in lab.hosts:
        h.create_network("ovl", subnet)
    h1.docker("run", "-d", "--name", on_h1, "--network", "ovl", IMAGE, "sleep", "3600")
    h2.docker("run", "-d", "--name", on_h2, "--network", "ovl", IMAGE, "sleep", "3600")
    return ip_of(h1, on_h1, "ovl")


def bench_tcp_2h(lab: Lab, runs: int) -> None:
    """Cross-host TCP: pyoverlay's path vs the same path built by hand, with and without
    the NAT rules Docker puts in every container (conntrack on every packet)."""
    h1, h2 = lab.host(1), lab.host(2)
    target = pair(lab, "100.6.0.0/24", "srv", "cli")
    wait_for(
        "cli -> srv",
        lambda: h2.docker("exec", "cli", "ping", "-c1", "-W1", target, check=False).returncode == 0,
    )
    ref = HandBuiltPath(lab)
    results: dict[str, list[float]] = {"pyoverlay": [], "hand": [], "hand_dns": []}
    try:
        ref.up()
        for r in range(max(runs, 8)):  # the three rotated each round: drift hits all alike
            for side in [*SIDES[r % 3 :], *SIDES[: r % 3]]:
                if side == "pyoverlay":
                    results[side].append(iperf((h1, "srv"), (h2, "cli"), target))
                    continue
                ref.docker_dns_rules(side == "hand_dns")
                results[side].append(ref.iperf())
    finally:
        ref.down()
    remove(h1, ["srv"])
    remove(h2, ["cli"])
    for h in lab.hosts:
        h.docker("network", "rm", "ovl")
    ours = results["pyoverlay"]
    report("tcp-2h", unit="Gbit/s", **paired("pyoverlay", ours, "hand_built", results["hand"], 2))
    report(
        "tcp-2h-vs-dns-nat",
        unit="Gbit/s",
        **paired("pyoverlay", ours, "hand_built_with_docker_dns_nat", results["hand_dns"], 2),
    )


SIDES = ("pyoverlay", "hand", "hand_dns")


class HandBuiltPath:
    """The physical limit: the seed's layout built by hand with iproute2 on the same two hosts.

    Per host: a namespace with br0 (MTU 1450) and a VXLAN VTEP created in the
    host's namespace (learning off, proxy on), moved in; a "container"
    namespace on a veth; static FDB/ARP entries.  Same as pyoverlay builds,
    minus pyoverlay.
    """

    VNI = 16000001
    NET = "10.251.0"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.p = lab.prefix + "r"

    def ns(self, kind: str, i: int) -> str:
        return f"{self.p}{kind}{i}"

    def up(self) -> None:
        hosts = self.lab.hosts[:2]
        for i, h in enumerate(hosts, 1):
            o, c = self.ns("o", i), self.ns("c", i)
            for n in (o, c):
                sh("ip", "netns", "add", n)
                sh("ip", "-n", n, "link", "set", "lo", "up")
            sh("ip", "-n", o, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", o, "link", "set", "br0", "mtu", "1450", "up")
            vx = f"{self.p}vx"
            sh(
                "ip",
                "-n",
                h.netns,
                "link",
                "add",
                vx,
                "type",
                "vxlan",
                "id",
                str(self.VNI),
                "dstport",
                "4789",
                "local",
                h.address,
                "nolearning",
                "proxy",
            )
            sh("ip", "-n", h.netns, "link", "set", vx, "netns", o)
            sh("ip", "-n", o, "link", "set", vx, "master", "br0", "mtu", "1450", "up")
            sh("ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", f"veth{i}")
            sh("ip", "-n", c, "link", "set", f"veth{i}", "netns", o)
            sh("ip", "-n", o, "link", "set", f"veth{i}", "master", "br0", "mtu", "1450", "up")
            sh(
                "ip",
                "-n",
                c,
                "link",
                "set",
                "eth0",
                "address",
                f"02:42:0a:fb:00:0{i}",
                "mtu",
                "1450",
                "up",
            )
            sh("ip", "-n", c, "addr", "add", f"{self.NET}.{i}/24", "dev", "eth0")
        for i, j in ((1, 2), (2, 1)):
            o = self.ns("o", i)
            sh(
                "ip",
                "-n",
                o,
                "neigh",
                "add",
                f"{self.NET}.{j}",
                "lladdr",
                f"02:42:0a:fb:00:0{j}",
                "dev",
                f"{self.p}vx",
                "nud",
                "permanent",
            )
            sh(
                "bridge",
                "-n",
                o,
                "fdb",
                "add",
                f"02:42:0a:fb:00:0{j}",
                "dev",
                f"{self.p}vx",
                "dst",
                hosts[j - 1].address,
                "self",
                "permanent",
            )
        sh("ip", "netns", "exec", self.ns("c", 1), "ping", "-c1", "-W2", f"{self.NET}.2")

    def docker_dns_rules(self, on: bool = True) -> None:
        """Give the hand-built "containers" what Docker puts in every container on a
        user-defined network: the embedded DNS's NAT rules (so conntrack runs on every
        packet); or (on=False) take them away."""
        if not on:
            for i in (1, 2):  # the table goes, so conntrack stops (iptables -F keeps hooks)
                sh("ip", "netns", "exec", self.ns("c", i), "nft", "flush", "ruleset")
            return
        rules = "\n".join(
            [
                "*nat",
                ":DOCKER_OUTPUT - [0:0]",
                ":DOCKER_POSTROUTING - [0:0]",
                "-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT",
                "-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING",
                "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp --dport 53 -j DNAT"
                " --to-destination 127.0.0.11:40000",
                "-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp --sport 40000 -j SNAT"
                " --to-source :53",
                "COMMIT",
                "",
            ]
        )
        for i in (1, 2):
            sh("ip", "netns", "exec", self.ns("c", i), "iptables-restore", input=rules)

    def iperf(self, seconds: int = 5) -> float:
        def inside(i: int) -> list[str]:
            return ["ip", "netns", "exec", self.ns("c", i)]

        return iperf_gbps(inside(1), inside(2), f"{self.NET}.1", 5202, seconds)

    def down(self) -> None:
        for i in (1, 2):
            for kind in ("o", "c"):
                n = self.ns(kind, i)
                sh("ip", "-n", n, "link", "del", f"{self.p}vx", check=False)
                sh("ip", "netns", "del", n, check=False)


def fdb_dsts(h: Host) -> list[str]:
    out = []
    for ns in h.overlay_namespaces():
        for e in json.loads(h.ns_exec(ns, "bridge", "-j", "fdb", "show").stdout or "[]"):
            if e.get("dst"):
                out.append(e["dst"])
    return out


def bench_crash(lab: Lab) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    for h in lab.hosts:
        h.create_network("ovl", "100.5.0.0/24")
    # h1 needs a container of its own on the network: only then has it the network's
    # sandbox and receives its rows (lazy sandboxes, as Docker's overlay)
    h1.docker("run", "-d", "--name", "watcher", "--network", "ovl", IMAGE, "sleep", "3600")
    h2.docker("run", "-d", "--name", "victim", "--network", "ovl", IMAGE, "sleep", "3600")
    wait_for("h2's container programmed on h1", lambda: h2.address in fdb_dsts(h1), timeout=15)
    # 1. a 2 s stall of h2's plugin: no false alarm
    assert h2.plugin_pid is not None
    log_before = len(h1.plugin_log())
    h2.run("kill", "-STOP", str(h2.plugin_pid))
    time.sleep(2.0)
    h2.run("kill", "-CONT", str(h2.plugin_pid))
    time.sleep(8.0)
    events = h1.plugin_log()[log_before:]
    false_alarm = '"status": "dead"' in events
    kept = h2.address in fdb_dsts(h1)
    # 2. a crash: entries gone within ...
    t0 = time.perf_counter()
    h2.crash()
    wait_for(
        "h2's entries gone from h1",
        lambda: h2.address not in fdb_dsts(h1),
        timeout=30,
        interval=0.02,
    )
    gone = time.perf_counter() - t0
    h2.set_link(True)
    h2.start_plugin()
    h2.start_dockerd()
    remove(h2, ["victim"])
    remove(h1, ["watcher"])
    for h in lab.hosts:
        h.docker("network", "rm", "ovl", check=False)
    report(
        "crash",
        entries_gone_after_s=round(gone, 2),
        stall_2s_false_alarm=false_alarm,
        stall_2s_entries_kept=kept,
    )


def ping_loss(h: Host, container: str, target: str, count: int) -> tuple[int, int]:
    import re

    out = h.docker(
        "exec",
        container,
        "ping",
        "-c",
        str(count),
        "-i",
        "0.02",
        "-W",
        "1",
        target,
        check=False,
        timeout=120,
    ).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    return (int(m.group(1)), int(m.group(2))) if m else (count, 0)


def bench_restart_loss(lab: Lab, runs: int) -> None:
    """kill -9 of the plugin on the sending, then the receiving host, a container started
    on the other host while it is down, restarted 0.5 s later; a 20 ms ping across hosts
    for 12 s (well past the restart and sync). `runs` times per side, on an idle machine
    and with a busy loop on every core (the loaded machine CI often is)."""
    h1, h2 = lab.host(1), lab.host(2)
    target = pair(lab, "100.2.0.0/24", "rx", "tx")
    wait_for("tx -> rx", lambda: ping_loss(h2, "tx", target, 1)[1] == 1, timeout=20)
    results: dict[str, list[int]] = {}
    late = 0
    for load in ("idle", "loaded"):
        with contextlib.ExitStack() as stack:
            if load == "loaded":
                stack.enter_context(cpu_hog())
            for side, victim, other in (("sender", h2, h1), ("receiver", h1, h2)):
                lost = results.setdefault(f"{load}_{side}", [])
                for _ in range(runs):
                    result: list[tuple[int, int]] = []
                    t = threading.Thread(
                        target=lambda out=result: out.append(ping_loss(h2, "tx", target, 600))
                    )
                    t.start()
                    time.sleep(0.8)
                    victim.stop_plugin(signal.SIGKILL)
                    late += 1
                    other.docker("run", "-d", "--name", f"late{late}", "--network", "ovl",
                                 IMAGE, "sleep", "3600")  # fmt: skip
                    time.sleep(0.5)
                    victim.start_plugin()
                    t.join()
                    sent, got = result[0]
                    lost.append(sent - got)
                    remove(other, [f"late{late}"])
    remove(h1, ["rx"])
    remove(h2, ["tx"])
    for h in lab.hosts:
        h.docker("network", "rm", "ovl", check=False)
    report(
        "restart-loss",
        runs_per_side=runs,
        **{
            k: f"worst {max(v)}, total {sum(v)} of {len(v)} x 600 lost"
            for k, v in sorted(results.items())
        },
    )


def bench_ipv6(lab: Lab, runs: int) -> None:
    """Cross-host TCP over IPv6 vs over IPv4 between the same two containers of one
    dual-stack network (`--ipv6`), alternated for `runs` rounds (at least 4): the
    ratio of medians, with every round's figures."""
    h1, h2 = lab.host(1), lab.host(2)
    for h in lab.hosts:
        h.docker("network", "create", "-d", h.driver, "--ipam-driver", h.driver, "--ipv6",
                 "--subnet", "100.8.0.0/24", "--subnet", "fd00:100:8::/64", "ds")  # fmt: skip
    for h, name in ((h1, "v6srv"), (h2, "v6cli")):
        h.docker("run", "-d", "--name", name, "--network", "ds", IMAGE, "sleep", "3600")
    fmt = '{{(index .NetworkSettings.Networks "ds").%s}}'
    v4 = h1.docker("inspect", "-f", fmt % "IPAddress", "v6srv").stdout.strip()
    v6 = h1.docker("inspect", "-f", fmt % "GlobalIPv6Address", "v6srv").stdout.strip()
    for target in (v4, v6):
        wait_for(f"v6cli -> {target}", lambda t=target: ping_loss(h2, "v6cli", t, 1)[1] == 1)
    results: dict[str, list[float]] = {"ipv6": [], "ipv4": []}
    try:
        for r in range(max(4, runs)):
            for family, target in [("ipv6", v6), ("ipv4", v4)][:: 1 if r % 2 == 0 else -1]:
                results[family].append(iperf((h1, "v6srv"), (h2, "v6cli"), target, seconds=3))
    finally:
        remove(h1, ["v6srv"])
        remove(h2, ["v6cli"])
        for h in lab.hosts:
            h.docker("network", "rm", "ds", check=False)
    report("ipv6", unit="Gbit/s", **paired("ipv6", results["ipv6"], "ipv4", results["ipv4"], 2))


def admission_in_force(h: Host) -> bool:
    """Whether h's guard table drops VXLAN from non-members (what `nft list table` shows)."""
    out = h.run("nft", "list", "table", "inet", GUARD_TABLE, check=False).stdout
    return f"@{MEMBERS_SET}" in out


def bench_admission(lab: Lab, runs: int) -> None:
    """Cross-host TCP on a plain network with VXLAN admission on, then off, alternately:
    both plugins restart with `--vxlan-admission on|off` before each measurement."""
    h1, h2 = lab.host(1), lab.host(2)
    target = pair(lab, "100.7.0.0/24", "asrv", "acli")
    results: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(max(2, runs)):
        for mode in ("on", "off"):
            for h in lab.hosts:
                h.stop_plugin()
                h.start_plugin(*lab.default_plugin_args(h), "--vxlan-admission", mode)
            for h in lab.hosts:
                wait_for(
                    f"admission {mode} in {h.name}'s guard table",
                    lambda h=h, on=mode == "on": admission_in_force(h) is on,
                    timeout=60,
                )
            wait_for("acli -> asrv", lambda: ping_loss(h2, "acli", target, 1)[1] == 1, timeout=30)
            results[mode].append(iperf((h1, "asrv"), (h2, "acli"), target))
    for h in lab.hosts:
        h.stop_plugin()
        h.start_plugin(*lab.default_plugin_args(h))
    remove(h1, ["asrv"])
    remove(h2, ["acli"])
    for h in lab.hosts:
        h.docker("network", "rm", "ovl", check=False)
    report("admission", unit="Gbit/s", **paired("on", results["on"], "off", results["off"], 2))


ATTACKER = r"""
import os, socket, struct, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
junk = os.urandom(4 << 20)
stop = False
def hostile():
    while not stop:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(struct.pack("!H", 256) + junk)
            s.recv(1)
            s.close()
        except OSError:
            time.sleep(0.05)
ts = [threading.Thread(target=hostile, daemon=True) for _ in range(n)]
[t.start() for t in ts]
print("attacking", flush=True)
sys.stdin.read()
stop = True
"""


def bench_hostile(lab: Lab, runs: int) -> None:
    import sys

    h1 = lab.host(1)
    h1.create_network("ovl", "100.1.0.0/24")
    assert h1.plugin_pid is not None
    before_runs = timed_runs(h1, "ovl", runs, "hb")
    rss0 = rss_mib(h1.plugin_pid)
    attacker = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.underlay_ns,
            sys.executable,
            "-c",
            ATTACKER,
            h1.address,
            "7966",
            "20",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert attacker.stdout is not None and attacker.stdin is not None
    attacker.stdout.readline()
    time.sleep(2.0)
    cpu0, t0 = cpu_seconds(h1.plugin_pid), time.monotonic()
    during_runs = timed_runs(h1, "ovl", runs, "hd")
    plugin_cpu = (cpu_seconds(h1.plugin_pid) - cpu0) / (time.monotonic() - t0)
    rss1 = rss0
    for _ in range(5):
        time.sleep(0.2)
        rss1 = max(rss1, rss_mib(h1.plugin_pid))
    attacker.stdin.close()
    attacker.wait(timeout=30)
    st = json.loads(
        h1.run(lab.pyoverlay, "status", "--json", "--state-dir", str(h1.state_dir)).stdout
    )
    remove(h1, [f"hb{i}" for i in range(runs)] + [f"hd{i}" for i in range(runs)])
    h1.docker("network", "rm", "ovl", check=False)
    c = st.get("counters", {})
    report(
        "hostile",
        rss_before_mib=round(rss0, 1),
        rss_growth_mib=round(rss1 - rss0, 1),
        run_during_vs_before=round(
            statistics.median(during_runs) / statistics.median(before_runs), 2
        ),
        plugin_cpu_during_pct=round(plugin_cpu * 100, 1),
        refused=c.get("streams_refused", 0),
        dropped_auth=c.get("dropped_auth", 0),
        dropped_oversized=c.get("dropped_oversized", 0),
    )


def bench_swarm_reach(attach_runs: int) -> None:
    runs = min(attach_runs, 5)  # services take seconds each
    lab = Lab("bsw" + secrets.token_hex(1), hosts=2)
    with lab.running(plugin=False):
        h1, h2 = lab.host(1), lab.host(2)
        for h in lab.hosts:
            h.install_plugin("PYOVERLAY_SCOPE=global")
        lab.swarm(managers=1)
        results: dict[str, list[float]] = {"pyoverlay": [], "overlay": []}
        after_start: dict[str, list[float]] = {"pyoverlay": [], "overlay": []}
        nids: dict[str, str] = {}
        for driver, net, subnet in (
            ("overlay", "bo", "100.12.0.0/24"),
            (PLUGIN, "bp", "100.13.0.0/24"),
        ):
            nids[net] = h1.create_swarm_network(net, subnet, driver)
            for h in (h1, h2):
                h.docker(
                    "run", "-d", "--name", f"probe-{net}", "--network", net, IMAGE, "sleep", "3600"
                )
        attached = attached_reach(h1, h2, nids, attach_runs)
        for i in range(runs):  # alternate, so drift hits both alike
            for key, net in (("overlay", "bo"), ("pyoverlay", "bp")):
                name = f"s{net}{i}"
                t0 = time.perf_counter()
                h1.create_service(name, net, h2, IMAGE, "sleep", "3600", mode="dnsrr")
                found: list[str] = []
                started: list[float] = []

                def answered(
                    net: str = net,
                    name: str = name,
                    found: list[str] = found,
                    at: list[float] = started,
                ) -> bool:
                    if not found:
                        found[:] = [ip_of(h2, c, net) for c in h2.service_containers(name)]
                        at[:] = [time.perf_counter()] if found else []
                    return bool(found) and ping_loss(h1, f"probe-{net}", found[0], 1)[1] == 1

                wait_for(f"{name} reachable", answered, timeout=120, interval=0.05)
                results[key].append(time.perf_counter() - t0)
                after_start[key].append(time.perf_counter() - started[0])
                h1.docker("service", "rm", name)
        vip_across_hosts(h1, h2)
        for h in lab.hosts:
            h.docker("swarm", "leave", "--force", check=False, timeout=120)
            h.remove_plugin()
    report(
        "swarm-reach",
        runs=runs,
        pyoverlay_median_ms=ms(statistics.median(results["pyoverlay"])),
        overlay_median_ms=ms(statistics.median(results["overlay"])),
        ratio=round(
            statistics.median(results["pyoverlay"]) / statistics.median(results["overlay"]), 2
        ),
        after_task_start_pyoverlay_ms=ms(statistics.median(after_start["pyoverlay"])),
        after_task_start_overlay_ms=ms(statistics.median(after_start["overlay"])),
    )
    for key, got in attached.items():
        report(f"swarm-reach-attached-{key}", **reach_figures(got, attach_runs))


def attached_reach(
    h1: Host, h2: Host, nids: dict[str, str], runs: int
) -> dict[str, list[tuple[float, float]]]:
    """`docker run -d` of an attachable container on h1 -> h2's VTEP has its entry:
    Docker's overlay (its namespace among dockerd's) and pyoverlay's, runs alternated."""
    paths = {
        "overlay": ("bo", f"{h2.sandbox_dir}/{namespace_name(nids['bo'])}"),
        "pyoverlay": ("bp", f"/run/netns/{namespace_name(nids['bp'])}"),
    }
    watches: dict[str, reach.NeighWatch] = {}
    out: dict[str, list[tuple[float, float]]] = {key: [] for key in paths}
    try:
        for key, (_, path) in paths.items():
            watches[key] = reach.NeighWatch(h2, path)
        for i in range(runs):
            for key in ("overlay", "pyoverlay") if i % 2 == 0 else ("pyoverlay", "overlay"):
                net = paths[key][0]
                got = reach.run_and_reach(h1, [watches[key]], net, f"a{net}{i}", IMAGE)
                if got is not None:
                    out[key].append(got)
    finally:
        for w in watches.values():
            w.close()
    remove(h1, [f"a{net}{i}" for net in ("bo", "bp") for i in range(runs)])
    return out


def vip_across_hosts(h1: Host, h2: Host) -> None:
    """A VIP service with its task on h2, the probe on h1 (network bp): through the VIP vs
    straight to the task, across the overlay (Docker's own VIPs need IPVS: none here)."""
    from lab import bench_vips

    h1.create_service("vipsrv", "bp", h2, IMAGE, "sleep", "3600")
    nid = h1.docker("network", "inspect", "-f", "{{.Id}}", "bp").stdout.strip()
    vip = h1.service_vip("vipsrv", nid)
    task: list[str] = []

    def started() -> bool:
        task[:] = h2.service_containers("vipsrv")
        return bool(task)

    wait_for("vipsrv's task", started, timeout=120, interval=0.5)
    task_ip = ip_of(h2, task[0], "bp")
    wait_for(
        "the probe's rules send the VIP to the task",
        lambda: task_ip in h1.in_container_netns("probe-bp", "nft", "list", "ruleset").stdout,
    )
    setup, gbps = bench_vips.vip_vs_direct(
        in_container(h2, task[0]),
        in_container(h1, "probe-bp"),
        IPv4Address(vip),
        IPv4Address(task_ip),
    )
    report("swarm-vip-setup", **setup)
    report("swarm-vip-throughput", **gbps)
    h1.docker("service", "rm", "vipsrv")


# -- simulation ---------------------------------------------------------------------------


def sim_converged(nodes: list[GossipNode], n: int) -> bool:
    return all(len(x.alive_members()) == n for x in nodes)


def sim_load(n: int, config: GossipConfig, seconds: float, seed: int) -> dict[str, object]:
    """n nodes join at 5 % loss; then a row from a random node every 0.5 s for `seconds`:
    time until every node has each row; packets/node/s during that load and in the 20 s
    of quiet after it; live nodes declared dead (all of them are false: nothing fails)."""
    from testing.sim import SimNetwork

    net = SimNetwork(seed=seed, loss=0.05, config=config)
    nodes = [net.add_node(f"n{i}") for i in range(n)]
    for x in nodes:
        x.join_network(net.now, "1")  # every host has a container on the network
    net.join_all()
    net.run_while(partial(lambda ns, k: not sim_converged(ns, k), nodes, n), limit=300)
    net.run_for(5.0)
    for x in nodes:
        x.events()  # drop what the join produced

    def packets() -> int:
        return sum(st.packets_out for st in net.stats.values())

    p0, t0 = packets(), net.now
    pending: dict[str, float] = {}
    took: list[float] = []
    k = 0
    while net.now - t0 < seconds or (pending and net.now - t0 < seconds + 60):
        if net.now - t0 < seconds and net.now >= t0 + 0.5 * k:
            key = f"e{k}"
            nodes[net.rng.randrange(n)].publish(net.now, "peer/1", key, {"ip": f"10.0.0.{k % 250}"})
            pending[key] = net.now
            k += 1
        net.run_for(0.05)
        for key in [x for x in pending if all(("peer/1", x) in y.table.rows for y in nodes)]:
            took.append(net.now - pending.pop(key))
    loaded = (packets() - p0) / n / (net.now - t0)
    p1, t1 = packets(), net.now
    net.run_for(20.0)
    idle = (packets() - p1) / n / (net.now - t1)
    took.sort()
    return {
        "rows": len(took),
        "missing": len(pending),
        "p50_ms": ms(statistics.median(took)),
        "p99_ms": ms(took[min(len(took) - 1, int(len(took) * 0.99))]),
        "max_ms": ms(took[-1]),
        "pkts_node_s_loaded": round(loaded, 1),
        "pkts_node_s_quiet": round(idle, 1),
        "false_dead": sum(1 for x in nodes for e in member_events(x) if e.status == "dead"),
    }


def member_events(node: GossipNode) -> list[MemberEvent]:
    """What a node saw happen to members since the last call (rows' events dropped)."""
    return [e for e in node.events() if isinstance(e, MemberEvent)]


def ratio(a: object, b: object) -> float:
    return round(float(str(a)) / float(str(b)), 2)


def memberlist_params() -> GossipConfig:
    """memberlist's DefaultLANConfig timings (probe 1 s / 500 ms, suspicion x4, retransmit
    x4, gossip 200 ms to 3) on pyoverlay's implementation: the published model, not its code."""
    from dataclasses import replace

    return replace(GossipConfig.lan(), probe_interval=1.0, probe_timeout=0.5, suspicion_mult=4)


def bench_gossip_sim() -> None:
    for n in (200, 1000):
        ours = sim_load(n, GossipConfig.lan(), 30.0, seed=n)
        theirs = sim_load(n, memberlist_params(), 30.0, seed=n)
        report(f"gossip-sim-{n}-pyoverlay", loss="5%", **ours)
        report(f"gossip-sim-{n}-memberlist", loss="5%", **theirs)
        report(
            f"gossip-sim-{n}-ratio",
            p99_vs_memberlist=ratio(ours["p99_ms"], theirs["p99_ms"]),
            loaded_packets_vs_memberlist=ratio(
                ours["pkts_node_s_loaded"], theirs["pkts_node_s_loaded"]
            ),
        )


def bench_gossip_quiet() -> None:
    """10 simulated minutes of a quiet 200-node cluster at 5 % loss: false dead declarations."""
    from testing.sim import SimNetwork

    net = SimNetwork(seed=3, loss=0.05)
    nodes = [net.add_node(f"n{i}") for i in range(200)]
    net.join_all()
    net.run_while(partial(lambda ns, k: not sim_converged(ns, k), nodes, 200), limit=300)
    for x in nodes:
        x.events()  # drop what the join produced
    net.run_for(600.0)
    events = [e for x in nodes for e in member_events(x)]
    report(
        "gossip-quiet-200",
        loss="5%",
        simulated_s=600,
        suspicions=sum(1 for e in events if e.status == "suspect"),
        false_dead=sum(1 for e in events if e.status == "dead"),
    )


SINGLE: dict[str, Callable[[Lab, int], None]] = {
    "join-latency": lambda lab, runs: bench_join_latency(lab, 100),
    "run-time-1h": lambda lab, runs: bench_run_time(lab, runs, "run-time-1h", "100.4.0.0/24"),
    "tcp-1h": lambda lab, runs: bench_tcp_1h(lab),
}
DOUBLE: dict[str, Callable[[Lab, int], None]] = {
    "reach": bench_reach,
    "run-time-2h": lambda lab, runs: bench_run_time(lab, runs, "run-time-2h", "100.3.0.0/24"),
    "tcp-2h": bench_tcp_2h,
    "crash": lambda lab, runs: bench_crash(lab),
    "restart-loss": bench_restart_loss,
    "admission": bench_admission,
    "ipv6": bench_ipv6,
    "hostile": bench_hostile,
    "footprint": lambda lab, runs: bench_footprint.idle(lab, report),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="write this run's figures into README.md's benchmark table (the rows of the "
        "benchmarks run; the others keep the run they came from)",
    )
    parser.add_argument(
        "--pyoverlay",
        default=None,
        help="the plugin executable lab hosts run (default: this venv's; another build's, to "
        "compare versions: run the same --only with each)",
    )
    parser.add_argument(
        "--plugin-before",
        default="",
        help="plugin-install: an older build's tree (scripts/build-plugin --tar) to compare",
    )
    parser.add_argument(
        "--hosts", type=int, default=200, help="gossip-scope: simulated hosts (1000: ~1 h)"
    )
    args = parser.parse_args()
    only = {x for x in args.only.split(",") if x}

    def want(name: str) -> bool:
        return not only or name in only or any(name.startswith(o) for o in only)

    if any(want(n) for n in SINGLE):
        lab = Lab("bn1" + secrets.token_hex(1), hosts=1, pyoverlay=args.pyoverlay)
        with lab.running():
            for name, fn in SINGLE.items():
                if want(name):
                    fn(lab, args.runs)
    if any(want(n) for n in DOUBLE):
        lab = Lab("bn2" + secrets.token_hex(1), hosts=2, pyoverlay=args.pyoverlay)
        with lab.running():
            for name, fn in DOUBLE.items():
                if want(name):
                    fn(lab, args.runs)
    if want("reach-3h"):
        lab = Lab("bn3" + secrets.token_hex(1), hosts=3, pyoverlay=args.pyoverlay)
        with lab.running():
            bench_reach(lab, max(args.runs, 20))
    if want("swarm-reach") or want("swarm-vip"):
        bench_swarm_reach(args.runs)
    if want("mesh"):
        from lab import bench_mesh

        bench_mesh.run(report)
    if want("plugin-install"):
        from lab import bench_install

        bench_install.run(report, min(args.runs, 5), args.plugin_before)
    if want("vips"):
        from lab import bench_vips

        bench_vips.run(report)
    if want("ipsec-keeper"):
        from lab import bench_keeper

        bench_keeper.run(report, args.runs)
    if want("gossip-sim"):
        bench_gossip_sim()
    if want("gossip-quiet"):
        bench_gossip_quiet()
    if want("footprint"):
        bench_footprint.rows(report)
        bench_footprint.managed(report)
    if want("large-tables"):
        from lab import bench_tables

        bench_tables.run(report)
    if want("gossip-scope"):
        from lab import bench_scope

        bench_scope.run(report, args.hosts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    if args.readme:
        from lab import readme_table

        readme_table.update(ROOT / "README.md", RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
