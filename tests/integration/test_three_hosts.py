"""Three real Docker hosts: the seed's three tiers on three hosts, and concurrent `docker run`s."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import Pinger, Scratch, api, both, ip_of, ping

from lab.hosts import IMAGE, Host, Lab, start_seed_app, wait_for

pytestmark = pytest.mark.integration
HOSTS = 3
SLEEP = ("sleep", "3600")


def test_seed_application_on_three_hosts(lab: Lab, scratch: Scratch) -> None:
    h1, h2, h3 = lab.hosts
    both(scratch, lab, "net1", "100.1.0.0/24")
    start_seed_app(h1, h2, h3, "net1", run=scratch.run)
    wait_for(
        "front(h3) -> web(h2) -> kv(h1)",
        lambda: "says hits=" in lab.http_get(h3, 1080, "/cgi-bin/app"),
        timeout=30,
    )
    assert "says hits=:" in lab.http_get(h3, 1080, "/cgi-bin/app")


def test_concurrent_runs_on_three_hosts_get_distinct_addresses(lab: Lab, scratch: Scratch) -> None:
    both(scratch, lab, "net2", "100.1.2.0/24")
    jobs = [(h, f"{h.name}c{i}") for h in lab.hosts for i in range(4)]

    def run(job):
        h, name = job
        scratch.run(h, name, "--network", "net2", IMAGE, "sleep", "3600")
        return ip_of(h, name, "net2")

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        ips = list(pool.map(run, jobs))
    assert len(set(ips)) == len(ips), sorted(ips)
    # every host reaches one container on each other host
    for h in lab.hosts:
        for other, name in jobs:
            if other is not h and name.endswith("c0"):
                src, target = f"{h.name}c0", ip_of(other, name, "net2")
                wait_for(f"{src} -> {name}", lambda h=h, s=src, t=target: ping(h, s, t), timeout=15)


def test_rows_and_sandboxes_only_where_a_network_has_containers(lab: Lab, scratch: Scratch) -> None:
    """Issue 12: 3 networks on 3 hosts, containers on only some hosts.  A host keeps a
    network's sandbox and endpoint rows only while it has a container on it; traffic
    is unchanged; the first container on a host reaches the others at once."""
    h1, h2, h3 = lab.hosts
    nss = {net: both(scratch, lab, net, f"100.1.{3 + i}.0/24") for i, net in enumerate("abc")}
    where = {"a": (h1, h2), "b": (h2, h3), "c": (h1, h3)}  # hosts with a container
    for net, hosts in where.items():
        for h in hosts:
            scratch.run(h, f"{net}{h.name}", "--network", net, IMAGE, *SLEEP)
    for net, (x, y) in where.items():
        target = ip_of(y, f"{net}{y.name}", net)
        src = f"{net}{x.name}"
        wait_for(f"{src} -> {target}", lambda x=x, s=src, t=target: ping(x, s, t), timeout=15)

    for net, hosts in where.items():
        for h in lab.hosts:
            got = rows_of(h, lab, net)
            if h in hosts:
                assert nss[net][h.name] in h.overlay_namespaces()
                other = next(o for o in hosts if o is not h)
                assert got == {
                    ip_of(other, f"{net}{other.name}", net): "ok",
                    ip_of(h, f"{net}{h.name}", net): "local",
                }, (net, h.name)
                assert stored_rows(h, lab, net) == 2, (net, h.name)
            else:
                assert nss[net][h.name] not in h.overlay_namespaces(), (net, h.name)
                assert got is None, (net, h.name)
                assert stored_rows(h, lab, net) == 0, (net, h.name)

    # the first container of "b" on h1: sandbox made, rows fetched, reachable at once
    scratch.run(h1, "bh1", "--network", "b", IMAGE, *SLEEP)
    assert nss["b"]["h1"] in h1.overlay_namespaces()
    for other in (h2, h3):
        assert ping(h1, "bh1", ip_of(other, f"b{other.name}", "b")), other.name
    # and after its last container leaves, the sandbox and the rows go
    h1.docker("rm", "-f", "bh1")
    assert nss["b"]["h1"] not in h1.overlay_namespaces()
    # only its own delete (a tombstone the others may still need) stays until reaped
    wait_for("h1 forgot b's rows", lambda: stored_rows(h1, lab, "b") == 1, timeout=5)
    assert ping(h2, "bh2", ip_of(h3, "bh3", "b"))  # the others never noticed


def test_whole_fleet_restart_loses_no_packet(lab: Lab, scratch: Scratch) -> None:
    """Every plugin killed at once (a fleet upgrade, a power blip of the control plane),
    h1 and h2 back at once, h3 only 8 s later: each restarted plugin starts with an empty
    table, h1 and h2 sync with each other long before h3 speaks, and no entry towards h3
    may go while its host answers. Pings h1 -> h2 -> h3 -> h1 run throughout: none lost."""
    h1, h2, h3 = lab.hosts
    both(scratch, lab, "fleet", "100.1.9.0/24")
    for h in lab.hosts:
        scratch.run(h, f"f{h.name}", "--network", "fleet", IMAGE, *SLEEP)
    ring = [(h1, h2), (h2, h3), (h3, h1)]
    for a, b in ring:
        t = ip_of(b, f"f{b.name}", "fleet")
        wait_for(f"{a.name} -> {b.name}", lambda a=a, t=t: ping(a, f"f{a.name}", t), timeout=15)
    pingers = [Pinger(a, f"f{a.name}", ip_of(b, f"f{b.name}", "fleet")) for a, b in ring]
    try:
        for h in lab.hosts:
            h.stop_plugin(signal.SIGKILL)
        h1.start_plugin()
        h2.start_plugin()
        time.sleep(8.0)  # deliberate: h3's plugin is the slow one
        h3.start_plugin()
        for h in lab.hosts:
            wait_for(
                f"{h.name} in sync, every entry ok",
                lambda h=h: (
                    len(rows_of(h, lab, "fleet") or {}) == 3
                    and all(v in ("ok", "local") for v in (rows_of(h, lab, "fleet") or {}).values())
                ),
                timeout=20,
            )
        results = [p.stop() for p in pingers]
    finally:
        for p in pingers:
            p.kill()
    for (a, b), (out, sent, got) in zip(ring, results, strict=True):
        assert got == sent, f"{a.name} -> {b.name}: {out}"


def rows_of(h: Host, lab: Lab, net: str) -> dict[str, str] | None:
    """`pyoverlay peers` on h for network `net`: ip -> state, None if h has no sandbox."""
    nid = h.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    for v in api(h, "/peers"):
        if nid.startswith(v["network"]):
            return None if v["namespace"] is None else {p["ip"]: p["state"] for p in v["peers"]}
    raise AssertionError(f"{net} not listed by pyoverlay peers on {h.name}")


def stored_rows(h: Host, lab: Lab, net: str) -> int:
    """Endpoint rows of `net` (visible or not) the plugin on h holds (`status --json`)."""
    nid = h.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    nets = api(h, "/status")["networks"]
    return int(next(n["rows"] for n in nets if nid.startswith(n["network"])))
