"""One real Docker host: what a user does with `docker network` and `docker run`, and what they see.

Each test checks the user-visible result (packets flow, the CLI's message,
`ip netns`/`ip link` show the seed's layout) and that nothing is left behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from support import Scratch, cli

from lab.hosts import IMAGE, Host, Lab, wait_for

pytestmark = pytest.mark.integration
HOSTS = 1
SLEEP = ("sleep", "3600")


def links(h: Host, ns: str | None = None) -> dict[str, dict[str, object]]:
    cmd = ["ip", "-j", "-d", "link"]
    out = h.ns_exec(ns, *cmd).stdout if ns else h.run(*cmd).stdout
    return {str(e["ifname"]): e for e in json.loads(out)}


def our_host_veths(h: Host) -> list[str]:
    return sorted(n for n in links(h) if n.startswith("pyc"))


def ip_of(h: Host, container: str, network: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network
    return h.docker("inspect", "-f", fmt, container).stdout.strip()


def ping(h: Host, container: str, ip: str, count: int = 1) -> subprocess.CompletedProcess[str]:
    return h.docker("exec", container, "ping", "-c", str(count), "-W", "2", ip, check=False)


def state(h: Host) -> dict[str, object]:
    return json.loads((h.state_dir / "driver.json").read_text())


def test_first_container_builds_the_seed_layout_and_the_last_removes_it(
    lab: Lab, h1: Host, scratch: Scratch
) -> None:
    nid = scratch.network(h1, "net1", "--subnet", "100.0.0.0/24", "-o", "vni=4097")
    ns = f"1-{nid[:10]}"
    assert ns not in h1.overlay_namespaces()  # lazy, as Docker's overlay: no container yet
    status = cli(h1, lab, "status").stdout
    assert "no local endpoint" in status and nid[:12] in status
    scratch.run(h1, "first", "--network", "net1", IMAGE, *SLEEP)
    assert ns in h1.overlay_namespaces()
    ln = links(h1, ns)
    vx = ln[f"pvx001001-{nid[:5]}"]
    info = vx["linkinfo"]["info_data"]  # type: ignore[index]
    assert (info["id"], info["port"], info["local"]) == (4097, 4789, h1.address)
    assert info["learning"] is False and info["proxy"] is True
    assert vx["master"] == "br0" and vx["mtu"] == 1450 and ln["br0"]["mtu"] == 1450
    addr = json.loads(h1.ns_exec(ns, "ip", "-j", "-4", "addr", "show", "br0").stdout)
    assert addr[0]["addr_info"][0]["local"] == "100.0.0.1"
    # the VTEP's UDP socket is on the host's underlay, not in the overlay namespace
    assert ":4789" in h1.run("ss", "-uln").stdout
    h1.docker("rm", "-f", "first")
    assert ns not in h1.overlay_namespaces()
    assert not [n for n in links(h1) if n.startswith("pvx")]
    h1.docker("network", "rm", "net1")
    assert not [n for n in links(h1) if n.startswith("pvx")]
    assert state(h1)["networks"] == {}


def test_two_containers_ping_each_other_through_br0(h1: Host, scratch: Scratch) -> None:
    nid = scratch.network(h1, "net2", "--subnet", "100.0.2.0/24")
    scratch.run(h1, "ca", "--network", "net2", IMAGE, *SLEEP)
    scratch.run(h1, "cb", "--network", "net2", IMAGE, *SLEEP)
    a_ip, b_ip = ip_of(h1, "ca", "net2"), ip_of(h1, "cb", "net2")
    assert a_ip != b_ip and {a_ip[:8], b_ip[:8]} == {"100.0.2."}
    assert ping(h1, "ca", b_ip, 3).returncode == 0
    assert ping(h1, "cb", a_ip).returncode == 0
    eth0 = json.loads(h1.docker("exec", "ca", "ip", "-o", "link", "show", "eth0").stdout and "[]")
    out = h1.docker("exec", "ca", "ip", "link", "show", "eth0").stdout
    mac = "02:42:" + ":".join(f"{int(x):02x}" for x in a_ip.split("."))
    assert "mtu 1450" in out and mac in out, (out, eth0)
    routes = h1.docker("exec", "ca", "ip", "route").stdout
    assert "default via" in routes and "dev eth1" in routes  # docker_gwbridge leg, as in the seed
    ports = [n for n, e in links(h1, f"1-{nid[:10]}").items() if e.get("master") == "br0"]
    assert len([p for p in ports if p.startswith("pyv")]) == 2


def test_published_port_reaches_httpd_through_docker_gwbridge(
    h1: Host, lab: Lab, scratch: Scratch
) -> None:
    scratch.network(h1, "web", "--subnet", "100.0.3.0/24")
    scratch.run(
        h1,
        "www",
        "--network",
        "web",
        "-p",
        "8080:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/var/www",
    )

    wait_for("httpd on :8080", lambda: "hello from pyoverlay" in lab.http_get(h1, 8080), timeout=20)


def test_stop_start_restart_and_rm_leave_no_veth(h1: Host, scratch: Scratch) -> None:
    scratch.network(h1, "life", "--subnet", "100.0.4.0/24")
    scratch.run(h1, "peer", "--network", "life", IMAGE, *SLEEP)
    scratch.run(h1, "cc", "--network", "life", IMAGE, *SLEEP)
    peer_ip = ip_of(h1, "peer", "life")
    h1.docker("stop", "-t", "1", "cc")
    assert our_host_veths(h1) == []
    assert len([e for e in state(h1)["endpoints"].values()]) == 1  # type: ignore[union-attr]
    h1.docker("start", "cc")
    assert ping(h1, "cc", peer_ip).returncode == 0
    h1.docker("restart", "-t", "1", "cc")
    assert ping(h1, "cc", peer_ip).returncode == 0
    h1.docker("rm", "-f", "cc")
    assert our_host_veths(h1) == []
    assert len(state(h1)["endpoints"]) == 1  # type: ignore[arg-type]


def test_network_connect_and_disconnect(h1: Host, scratch: Scratch) -> None:
    scratch.network(h1, "conn", "--subnet", "100.0.5.0/24")
    scratch.run(h1, "srv", "--network", "conn", IMAGE, *SLEEP)
    scratch.run(h1, "cli", IMAGE, *SLEEP)  # on the default bridge
    h1.docker("network", "connect", "--ip", "100.0.5.77", "conn", "cli")
    assert ip_of(h1, "cli", "conn") == "100.0.5.77"
    assert ping(h1, "cli", ip_of(h1, "srv", "conn")).returncode == 0
    h1.docker("network", "disconnect", "conn", "cli")
    assert "100.0.5." not in h1.docker("exec", "cli", "ip", "-o", "addr").stdout
    assert our_host_veths(h1) == []
    # the released address can be asked for again
    h1.docker("network", "connect", "--ip", "100.0.5.77", "conn", "cli")


def test_taken_ip_is_refused_with_a_clear_message(h1: Host, scratch: Scratch) -> None:
    scratch.network(h1, "ipnet", "--subnet", "100.0.6.0/24")
    scratch.run(h1, "one", "--network", "ipnet", "--ip", "100.0.6.10", IMAGE, *SLEEP)
    scratch.made.append((h1, "container", "two"))
    r = h1.docker(
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "ipnet",
        "--ip",
        "100.0.6.10",
        IMAGE,
        *SLEEP,
        check=False,
    )
    assert r.returncode != 0
    assert "address 100.0.6.10 is already in use" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-o", "vni=abc"],
            "-o vni=abc: the VXLAN network id must be a whole number from 1 to 16777215",
        ),
        (["-o", "vni=0"], "-o vni=0: the VXLAN network id must be from 1 to 16777215"),
        (
            ["-o", "colour=blue"],
            "unknown network option -o colour=blue; pyoverlay accepts -o vni=N",
        ),
        (["-o", "com.docker.network.driver.mtu=9000"], "must be from 576 to 1450"),
        (["--ipv6"], "--ipv6 needs an IPv6 --subnet"),  # (dual stack: test_multi_host)
        (["--ipam-opt", "x=y"], "unknown IPAM option --ipam-opt x=y"),
    ],
)
def test_bad_options_show_a_clear_error_and_leave_nothing(
    h1: Host, args: list[str], message: str
) -> None:
    before_ns = h1.overlay_namespaces()
    before_state = (
        (h1.state_dir / "driver.json").read_text()
        if (h1.state_dir / "driver.json").exists()
        else ""
    )
    r = h1.docker(
        "network",
        "create",
        "-d",
        "pyoverlay",
        "--ipam-driver",
        "pyoverlay",
        "--subnet",
        "100.0.7.0/24",
        *args,
        "bad",
        check=False,
    )
    assert r.returncode != 0
    assert "Error response from daemon" in r.stderr and message in r.stderr, r.stderr
    assert "bad" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert h1.overlay_namespaces() == before_ns
    after = (
        (h1.state_dir / "driver.json").read_text()
        if (h1.state_dir / "driver.json").exists()
        else ""
    )
    assert after == before_state
    pools = (
        json.loads((h1.state_dir / "ipam.json").read_text())["pools"]
        if (h1.state_dir / "ipam.json").exists()
        else {}
    )
    assert not [p for p in pools if "100.0.7.0" in p]  # the pool was released too


def test_internal_network_has_no_gateway_leg(h1: Host, scratch: Scratch) -> None:
    scratch.network(h1, "inside", "--internal", "--subnet", "100.0.8.0/24")
    scratch.run(h1, "i1", "--network", "inside", IMAGE, *SLEEP)
    scratch.run(h1, "i2", "--network", "inside", IMAGE, *SLEEP)
    assert "eth1" not in h1.docker("exec", "i1", "ip", "-o", "link").stdout
    assert ping(h1, "i1", ip_of(h1, "i2", "inside")).returncode == 0


def test_plugin_kill9_keeps_traffic_and_catches_up(h1: Host, scratch: Scratch) -> None:
    nid = scratch.network(h1, "k9", "--subnet", "100.0.9.0/24")
    scratch.run(h1, "cx", "--network", "k9", IMAGE, *SLEEP)
    scratch.run(h1, "cy", "--network", "k9", IMAGE, *SLEEP)
    y_ip = ip_of(h1, "cy", "k9")
    ns = f"1-{nid[:10]}"
    br_index = links(h1, ns)["br0"]["ifindex"]
    # a ping running across the kill and the restart loses nothing
    pinger = subprocess.Popen(
        [*h1_docker(h1), "exec", "cx", "ping", "-c", "30", "-i", "0.1", "-W", "1", y_ip],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    h1.stop_plugin(signal.SIGKILL)
    assert ns in h1.overlay_namespaces()
    time.sleep(0.5)
    h1.start_plugin()
    out, _ = pinger.communicate(timeout=30)
    assert "30 packets transmitted, 30 packets received" in out, out  # not rounded
    # the sandbox was kept, not rebuilt, and new containers join and old ones leave
    assert links(h1, ns)["br0"]["ifindex"] == br_index
    scratch.run(h1, "cz", "--network", "k9", IMAGE, *SLEEP)
    assert ping(h1, "cz", y_ip).returncode == 0
    h1.docker("rm", "-f", "cx")
    assert len(state(h1)["endpoints"]) == 2  # type: ignore[arg-type]


def test_daemon_restart_with_running_containers(h1: Host, scratch: Scratch) -> None:
    scratch.network(h1, "dr", "--subnet", "100.0.10.0/24")
    scratch.run(h1, "always", "--restart", "always", "--network", "dr", IMAGE, *SLEEP)
    scratch.run(h1, "other", "--restart", "always", "--network", "dr", IMAGE, *SLEEP)
    h1.stop_dockerd()
    h1.start_dockerd()
    wait_for(
        "restarted containers",
        lambda: h1.docker("ps", "-q", "--filter", "name=always").stdout.strip() != "",
        timeout=30,
    )
    wait_for(
        "ping after daemon restart",
        lambda: ping(h1, "always", ip_of(h1, "other", "dr")).returncode == 0,
        timeout=30,
    )
    scratch.run(h1, "fresh", "--network", "dr", IMAGE, *SLEEP)
    assert ping(h1, "fresh", ip_of(h1, "always", "dr")).returncode == 0


def h1_docker(h: Host) -> list[str]:
    from lab.hosts import DOCKER

    return [DOCKER, "-H", f"unix://{h.docker_sock}"]
