"""The routing mesh: the seed's two-node swarm with its three services, the published
port (ingress mode, Docker's default) answering on every node, on this kernel (no IPVS).

h1 is the manager and runs kv and web; h2 runs front, published as 1080:80.  A client on
the underlay (not a node) and the nodes themselves reach front through either node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import HOSTNAME_SERVER, cli, plugin_swarm

from lab.hosts import IMAGE, PLUGIN, Host, Lab, managed_plugin_pid, wait_for
from lab.registry import Release
from pyoverlay.driver.servicelb import meshdocker

pytestmark = pytest.mark.integration
HOSTS = 2
LEGACY_PLUGIN = False
SUBNET = "100.0.0.0/24"


@pytest.fixture(scope="module")
def swarm(lab: Lab, release: Release) -> Iterator[Lab]:
    yield from plugin_swarm(lab, release)


def mesh_table(h: Host) -> str:
    r = h.run("nft", "list", "table", "ip", "pyoverlay_mesh", check=False)
    return r.stdout if r.returncode == 0 else ""


def docker_user(h: Host) -> str:
    return h.run("iptables", "-S", "DOCKER-USER", check=False).stdout


def get(lab: Lab, h: Host, port: int, path: str = "/", from_host: Host | None = None) -> str:
    """An HTTP/1.0 GET to h:port from the underlay (a client that is not a node), or from
    the network namespace of node `from_host` itself."""
    if from_host is None:
        return lab.http_get(h, port, path)
    request = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 {h.address} {port}"
    return from_host.run("sh", "-c", request, check=False, timeout=30).stdout


def answers(lab: Lab, h: Host, port: int, n: int) -> list[str]:
    """What n TCP connections from the underlay to h:port read (a refusal reads "")."""
    nc = f"busybox nc -w 10 {h.address} {port} </dev/null"
    loop = f'for i in $(seq {n}); do echo "[$({nc} 2>/dev/null)]"; done'
    out = lab.underlay("sh", "-c", loop, timeout=60 + 5 * n).stdout.split()
    return [a.strip("[]") for a in out]


def test_the_seed_on_two_nodes_answers_on_every_node(swarm: Lab) -> None:
    h1, h2 = swarm.hosts
    # the seed's commands as typed (only the driver's name is ours)
    nid = h1.docker(
        "network", "create", "-d", PLUGIN, "--scope", "swarm", "--subnet", SUBNET, "net1"
    ).stdout.strip()

    def allocated() -> dict[str, Any] | None:
        info = json.loads(h1.docker("network", "inspect", "net1").stdout)[0]
        return info if (info.get("IPAM") or {}).get("Config") else None

    wait_for("net1 allocated by the swarm leader", allocated, timeout=60, interval=0.5)
    h1.create_service("kv", "net1", h1, IMAGE, "/app/kv-server")
    h1.create_service("web", "net1", h1, IMAGE, "/app/web-server", "kv")
    h1.create_service("front", "net1", h2, "-p", "1080:80", IMAGE, "/app/front-server", "web")
    slow = 120 * swarm.slow
    for h in swarm.hosts:  # every node answers, the one without front's task too
        wait_for(
            f"front -> web -> kv through {h.name}:1080",
            lambda h=h: "says hits=" in get(swarm, h, 1080, "/cgi-bin/app"),  # type: ignore[misc]
            timeout=slow,
            interval=1,
        )
    for node in swarm.hosts:  # and from the nodes themselves, to either node's address
        for h in swarm.hosts:
            assert "says hits=" in get(swarm, h, 1080, "/cgi-bin/app", from_host=node), (node, h)
    # Docker built nothing for the port here (no IPVS): the table is pyoverlay's
    no_ingress = h1.run("iptables", "-t", "nat", "-S", "DOCKER-INGRESS", check=False)
    print("iptables -t nat -S DOCKER-INGRESS on h1:", no_ingress.returncode, no_ingress.stderr)
    for h in swarm.hosts:
        table = mesh_table(h)
        assert "tcp . 1080 : goto port-tcp-1080" in table, (h.name, table)
        # one rule iptables can print (Docker's own iptables calls read this chain)
        assert "-m mark --mark 0x6d657368/0xfffffffe" in docker_user(h), docker_user(h)
    print(f"nft list table ip pyoverlay_mesh on h1:\n{mesh_table(h1)}")
    assert nid


def test_tasks_on_both_nodes_share_the_port_and_none_refuses(swarm: Lab) -> None:
    h1, h2 = swarm.hosts
    h1.create_service(
        "who",
        "net1",
        None,
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "-p",
        "1081:7000",
        *HOSTNAME_SERVER,
    )
    wait_for(
        "both tasks of who in every node's table (a local one and one via the other node)",
        lambda: all("to-tcp-1081-1" in mesh_table(h) for h in swarm.hosts),
        timeout=120 * swarm.slow,
        interval=0.5,
    )
    for h in swarm.hosts:
        got = answers(swarm, h, 1081, 30)
        assert "" not in got and len(set(got)) == 2, (h.name, got)  # balanced, none lost
    h1.docker("service", "scale", "--detach", "who=0")
    wait_for(
        "no task of who: out of every node's table",
        lambda: not any("1081" in mesh_table(h) for h in swarm.hosts),
        timeout=60 * swarm.slow,
        interval=0.5,
    )
    for h in swarm.hosts:  # refused at once, not left hanging
        assert answers(swarm, h, 1081, 3) == ["", "", ""]


def test_the_mesh_survives_a_plugin_kill_and_drift_is_repaired(swarm: Lab) -> None:
    h1, h2 = swarm.hosts
    pid = managed_plugin_pid(h1)
    assert pid is not None
    # connections through h1 (no front task there: every one crosses to h2) all through
    # the kill, the restart and the restarted plugin's first sync
    req = "printf 'GET /cgi-bin/app HTTP/1.0\\r\\n\\r\\n'"
    loop = f"for i in $(seq 100); do {req} | busybox nc -w 10 {h1.address} 1080; sleep 0.05; done"
    cmd = ["ip", "netns", "exec", swarm.underlay_ns, "sh", "-c", loop]
    steady = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(1)  # deliberate: the kill falls inside the running loop
    os.kill(pid, signal.SIGKILL)
    wait_for(
        "dockerd restarted the plugin",
        lambda: (
            managed_plugin_pid(h1, check=False) not in (None, pid)
            and cli(h1, swarm, "status").returncode == 0
        ),
        timeout=60 * swarm.slow,
        interval=0.5,
    )
    out, _ = steady.communicate(timeout=300)
    assert out.count("says hits=") == 100, out[-2000:]  # not one connection lost
    # deleted by hand, table and DOCKER-USER rule: the plugin puts them back
    h1.run("nft", "delete", "table", "ip", "pyoverlay_mesh")
    rule = ("-m", "mark", "--mark", "0x6d657368/0xfffffffe")  # (and SECURE: mark + 1)
    h1.run("iptables", "-D", "DOCKER-USER", *rule, "-m", "comment", "--comment",
           meshdocker.DOCKER_USER_COMMENT, "-j", "ACCEPT")  # fmt: skip
    # an older plugin's rule (it accepted the plain mark only) is replaced, not kept beside
    h1.run("nft", "insert", "rule", "ip", "filter", "DOCKER-USER", "meta", "mark",
           "0x6d657368", "counter", "accept", "comment", '"pyoverlay mesh"')  # fmt: skip
    wait_for(
        "the mesh table and the DOCKER-USER rule back on h1",
        lambda: (
            "port-tcp-1080" in mesh_table(h1)
            and docker_user(h1).count("pyoverlay mesh") == 1
            and "0x6d657368/0xfffffffe" in docker_user(h1)
        ),
        timeout=30 * swarm.slow,
        interval=0.5,
    )
    assert "says hits=" in get(swarm, h1, 1080, "/cgi-bin/app")
    services = cli(h1, swarm, "services").stdout
    assert "1080/tcp" in services and h2.address in services, services


def test_a_managers_plugin_down_past_failure_detection_keeps_the_port_on_every_node(
    swarm: Lab,
) -> None:
    h1, h2 = swarm.hosts  # h1: the manager, whose plugin alone reads the published ports
    h1.create_service("back", "net1", h1, "-p", "1082:7000", *HOSTNAME_SERVER)
    wait_for(
        "h2 forwards 1082 to h1",
        lambda: "to-tcp-1082-0" in mesh_table(h2),
        timeout=120 * swarm.slow,
        interval=0.5,
    )
    pid = managed_plugin_pid(h1)
    assert pid is not None
    loop = (
        f"for i in $(seq 150); do busybox nc -w 10 {h2.address} 1082 </dev/null; sleep 0.05; done"
    )
    cmd = ["ip", "netns", "exec", swarm.underlay_ns, "sh", "-c", loop]
    steady = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    # silent for 6 s (h2 declares it dead after ~3.3 s; its host still answers), then killed
    os.kill(pid, signal.SIGSTOP)
    time.sleep(6)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        "dockerd restarted the plugin",
        lambda: managed_plugin_pid(h1, check=False) not in (None, pid),
        timeout=60 * swarm.slow,
        interval=0.5,
    )
    out, _ = steady.communicate(timeout=300)
    assert len(out.split()) == 150, out  # every connection through h2 answered by h1's task
    h1.docker("service", "rm", "back")


def test_service_rm_leaves_no_rule_on_any_node(swarm: Lab) -> None:
    h1, _ = swarm.hosts
    for svc in h1.docker("service", "ls", "-q").stdout.split():
        h1.docker("service", "rm", svc)
    wait_for(
        "no mesh table and no DOCKER-USER rule on any node",
        lambda: not any(mesh_table(h) or "pyoverlay" in docker_user(h) for h in swarm.hosts),
        timeout=60 * swarm.slow,
        interval=1,
    )
