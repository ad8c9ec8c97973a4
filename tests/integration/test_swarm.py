"""The seed's own scenario: a real Docker swarm of three lab hosts, pyoverlay as a
global-scope managed plugin, the three tiers as `docker service create` on one network.

Hosts: h1 is the manager, h2 and h3 workers (h2 and h3 are promoted for the leader
failover test at the end).  The plugins get no --join: they find each other from
swarm's node discovery (DiscoverNew).  Services use `--endpoint-mode dnsrr` (Docker's
VIPs need its IPVS load balancer, which plugin networks do not get); Docker's DNS
resolves service names across nodes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from support import ping

from pyoverlay.lab.hosts import DOCKER, IMAGE, PLUGIN, Host, Lab, wait_for

pytestmark = pytest.mark.integration
HOSTS = 3
LEGACY_PLUGIN = False
SUBNET = "100.0.0.0/24"


@pytest.fixture(scope="module")
def swarm(lab: Lab) -> Iterator[Lab]:
    for h in lab.hosts:
        h.install_plugin("PYOVERLAY_SCOPE=global")
    lab.swarm(managers=1)
    yield lab
    h1 = lab.host(1)
    for svc in h1.docker("service", "ls", "-q", check=False).stdout.split():
        h1.docker("service", "rm", svc, check=False)
    for h in reversed(lab.hosts):
        h.docker("swarm", "leave", "--force", check=False, timeout=120)
    for h in lab.hosts:
        h.remove_plugin()


def cli(h: Host, lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return h.run(lab.pyoverlay, *args, "--state-dir", str(h.state_dir), check=False)


def task_on(h: Host, service_name: str) -> str:
    """The name of a running container of `service_name` on host `h` (waits for one)."""
    found: list[str] = []

    def running() -> bool:
        found[:] = h.service_containers(service_name)
        return bool(found)

    wait_for(f"a {service_name} task on {h.name}", running, timeout=90, interval=0.5)
    return found[0]


def overlay_addr(h: Host, container: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "net1").IPAddress}}'
    return h.docker("inspect", "-f", fmt, container).stdout.strip()


def peer_vteps(h: Host, lab: Lab) -> set[str]:
    views = json.loads(cli(h, lab, "peers", "--json").stdout or "[]")
    return {p["vtep"] for v in views for p in v["peers"] if p["state"] != "local"}


def test_seed_scenario_as_swarm_services(swarm: Lab) -> None:
    h1, h2, h3 = swarm.hosts
    nid = h1.create_swarm_network("net1", SUBNET)
    info = json.loads(h1.docker("network", "inspect", "net1").stdout)[0]
    assert info["Scope"] == "swarm" and info["IPAM"]["Config"][0]["Subnet"] == SUBNET
    h1.create_service("kv", "net1", h1, IMAGE, "/app/kv-server")
    h1.create_service("web", "net1", h2, IMAGE, "/app/web-server", "kv")
    h1.create_service(
        "front",
        "net1",
        h3,
        "--publish",
        "mode=host,target=80,published=1080",
        IMAGE,
        "/app/front-server",
        "web",
    )
    kv, web, front = task_on(h1, "kv"), task_on(h2, "web"), task_on(h3, "front")
    addrs = {overlay_addr(h1, kv), overlay_addr(h2, web), overlay_addr(h3, front)}
    assert len(addrs) == 3 and all(a.startswith("100.0.0.") for a in addrs), addrs
    # the seed's data path on a worker: the namespace of this swarm network, br0, VTEP
    assert f"1-{nid[:10]}" in h2.overlay_namespaces()
    # names resolve across nodes (Docker's DNS), and the chain front -> web -> kv works
    r = h3.docker("exec", front, "/app/resolve", "kv")
    assert r.stdout.strip() == overlay_addr(h1, kv), r
    wait_for(
        "front(h3) -> web(h2) -> kv(h1)",
        lambda: "says hits=" in swarm.http_get(h3, 1080, "/cgi-bin/app"),
        timeout=60,
    )
    diagram = cli(h2, swarm, "diagram").stdout
    assert "br0 100.0.0.1/24" in diagram and h1.address in diagram, diagram


def test_scale_drain_and_rm_leave_nothing_behind(swarm: Lab) -> None:
    h1, h2, h3 = swarm.hosts
    h1.docker(
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "many",
        "--network",
        "net1",
        "--endpoint-mode",
        "dnsrr",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        IMAGE,
        "sleep",
        "3600",
        timeout=120,
    )
    tasks = {h.name: task_on(h, "many") for h in swarm.hosts}
    ips = {h.name: overlay_addr(h, tasks[h.name]) for h in swarm.hosts}
    assert len(set(ips.values())) == 3, ips
    for h in swarm.hosts:  # every task reaches every other one
        for other in swarm.hosts:
            if other is not h:
                wait_for(
                    f"{h.name} -> {other.name}",
                    lambda h=h, other=other: ping(h, tasks[h.name], ips[other.name]),
                    timeout=30,
                )
    # drain h2: its task leaves, and so do its entries on the other hosts
    h1.docker("node", "update", "--availability", "drain", h2.node_id)
    wait_for("h2 drained", lambda: not h2.service_containers("many"), timeout=60, interval=0.5)
    wait_for(
        "h2's entries gone from h1 and h3",
        lambda: all(h2.address not in peer_vteps(h, swarm) for h in (h1, h3)),
        timeout=30,
        interval=0.5,
    )
    h1.docker("node", "update", "--availability", "active", h2.node_id)
    h1.docker("service", "rm", "many")
    wait_for(
        "no task left",
        lambda: not any(h.service_containers("many") for h in swarm.hosts),
        timeout=60,
        interval=0.5,
    )


def test_plugin_disable_enable_on_a_worker_keeps_traffic(swarm: Lab) -> None:
    h1, h2, h3 = swarm.hosts
    kv, front = task_on(h1, "kv"), task_on(h3, "front")
    target = overlay_addr(h1, kv)
    wait_for("front -> kv", lambda: ping(h3, front, target), timeout=30)
    cmd = [DOCKER, "-H", f"unix://{h3.docker_sock}", "exec", front]
    pinger = subprocess.Popen(
        [*cmd, "ping", "-c", "40", "-i", "0.1", "-W", "1", target],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # deliberate: the disable/enable must fall inside the running ping
    h3.docker("plugin", "disable", "-f", PLUGIN, timeout=60)
    h3.docker("plugin", "enable", PLUGIN, timeout=60)
    out, _ = pinger.communicate(timeout=60)
    assert "40 packets transmitted, 40 packets received" in out, out


def test_leader_failover_keeps_networks_and_allocates_new_ones(swarm: Lab) -> None:
    h1, h2, h3 = swarm.hosts
    for h in (h2, h3):
        h1.docker("node", "promote", h.node_id)

    def statuses() -> list[str]:
        out = h1.docker("node", "ls", "--format", "{{.ManagerStatus}}").stdout
        return sorted(out.split())

    # promoted nodes must have joined raft (Reachable) before the leader goes
    wait_for(
        "three managers in raft",
        lambda: statuses() == ["Leader", "Reachable", "Reachable"],
        timeout=90,
        interval=1,
    )
    h1.stop_dockerd()  # the leader goes away; h2 or h3 takes over
    try:

        def leader_elected() -> bool:
            r = h2.docker("node", "ls", "--format", "{{.ManagerStatus}}", check=False)
            return r.returncode == 0 and "Leader" in r.stdout

        wait_for("a new leader", leader_elected, timeout=90, interval=1)
        # the existing network still carries traffic between the remaining nodes
        web, front = task_on(h2, "web"), task_on(h3, "front")
        wait_for("front -> web", lambda: ping(h3, front, overlay_addr(h2, web)), timeout=30)
        # a new swarm network: AllocateNetwork on the new leader, a VNI of its own
        h2.create_swarm_network("net2", "100.0.1.0/24")
        a = h2.docker("run", "-d", "--name", "n2a", "--network", "net2", IMAGE, "sleep", "3600")
        b = h3.docker("run", "-d", "--name", "n2b", "--network", "net2", IMAGE, "sleep", "3600")
        assert a.returncode == 0 and b.returncode == 0
        fmt = '{{(index .NetworkSettings.Networks "net2").IPAddress}}'
        b_ip = h3.docker("inspect", "-f", fmt, "n2b").stdout.strip()
        wait_for("n2a -> n2b on the new network", lambda: ping(h2, "n2a", b_ip), timeout=30)
        vnis = json.loads(cli(h3, swarm, "status", "--json").stdout)["networks"]
        assert len({n["vni"] for n in vnis}) == len(vnis) >= 2, vnis
        h2.docker("rm", "-f", "n2a")
        h3.docker("rm", "-f", "n2b")
        h2.docker("network", "rm", "net2")
    finally:
        h1.start_dockerd()


def test_service_and_network_rm_leave_nothing_on_any_node(swarm: Lab) -> None:
    h1, h2, h3 = swarm.hosts
    mgr = next(h for h in (h2, h3, h1) if h.docker("node", "ls", "-q", check=False).returncode == 0)
    for svc in ("front", "web", "kv"):
        mgr.docker("service", "rm", svc, check=False)
    wait_for(
        "every task gone",
        lambda: not any(h.docker("ps", "-q").stdout.split() for h in swarm.hosts),
        timeout=90,
        interval=0.5,
    )
    mgr.docker("network", "rm", "net1")
    wait_for(
        "no pyoverlay namespace on any node",
        lambda: not any(h.overlay_namespaces() for h in swarm.hosts),
        timeout=60,
        interval=0.5,
    )
