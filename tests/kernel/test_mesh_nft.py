"""The routing mesh's table on the real kernel: two "nodes" (namespaces) on one
underlay, each with a docker_gwbridge-like bridge and one task behind it (both
tasks at 172.18.0.2, as on two Docker hosts), a client on the underlay.

What a user checks: a published port answers on either node's address from
the client and from a node itself, over both tasks; the local task sees the
client's address, the remote one the receiving node's; a node that receives a
member's connection without a task of its own refuses it (no second hop); no
task anywhere: refused, not left hanging; the kernel's listing matches the
plan (nothing to change), and drift made with the nft tool is seen.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from netprobe import SERVER, TCP_LOOP, UDP_LOOP

from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.servicelb import meshrules as mesh

pytestmark = pytest.mark.kernel
UL = "192.168.77"
NODES = {"a": IPv4Address(f"{UL}.1"), "b": IPv4Address(f"{UL}.2")}
CLIENT = f"{UL}.9"
TASK = IPv4Address("172.18.0.2")
PORT = mesh.PublishedPort("tcp", 1080, 7000)
UDP = mesh.PublishedPort("udp", 1053, 7053)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass
class Cluster:
    prefix: str

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def path(self, node: str) -> Path:
        return Path("/run/netns") / self.ns(node)

    def connect(
        self, from_ns: str, to: IPv4Address, n: int, port: mesh.PublishedPort = PORT
    ) -> list[str]:
        loop = TCP_LOOP if port.protocol == "tcp" else UDP_LOOP
        cmd = ["ip", "netns", "exec", self.ns(from_ns), sys.executable, "-c", loop]
        out = subprocess.run(
            [*cmd, str(n), str(to), str(port.published)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.stdout.split("\n")[:-1]


@pytest.fixture
def cluster(prefix: str) -> Iterator[Cluster]:
    c = Cluster(prefix)
    made: list[str] = []
    servers: list[subprocess.Popen[str]] = []
    try:

        def add(name: str) -> str:
            ns = c.ns(name)
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            return ns

        ul = add("ul")
        sh("ip", "-n", ul, "link", "add", "br-ul", "type", "bridge")
        sh("ip", "-n", ul, "link", "set", "br-ul", "up")

        def underlay_leg(ns: str, address: str) -> None:
            sh("ip", "-n", ul, "link", "add", f"{ns[-3:]}p", "type", "veth", "peer", "name", "eth0")
            sh("ip", "-n", ul, "link", "set", "eth0", "netns", ns)
            sh("ip", "-n", ul, "link", "set", f"{ns[-3:]}p", "master", "br-ul", "up")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

        underlay_leg(add("c"), CLIENT)
        for name, address in NODES.items():
            node = add(name)
            underlay_leg(node, str(address))
            sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", node, "link", "add", "gw0", "type", "bridge")
            sh("ip", "-n", node, "addr", "add", "172.18.0.1/16", "dev", "gw0")
            sh("ip", "-n", node, "link", "set", "gw0", "up")
            task = add(f"t{name}")
            sh("ip", "-n", node, "link", "add", "vt", "type", "veth", "peer", "name", "vtask")
            sh("ip", "-n", node, "link", "set", "vtask", "netns", task)
            sh("ip", "-n", node, "link", "set", "vt", "master", "gw0", "up")
            sh("ip", "-n", task, "link", "set", "vtask", "name", "eth0")
            sh("ip", "-n", task, "addr", "add", f"{TASK}/16", "dev", "eth0")
            sh("ip", "-n", task, "link", "set", "eth0", "up")
            sh("ip", "-n", task, "route", "add", "default", "via", "172.18.0.1")
            server = subprocess.Popen(
                ["ip", "netns", "exec", task, sys.executable, "-c", SERVER, f"task-{name}"],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield c
    finally:
        for server in servers:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def nft() -> Iterator[Nft]:
    adapter = Nft()
    yield adapter
    adapter.close()


def view(node: str, local: bool = True, remote: bool = True) -> mesh.Mesh:
    other = [a for n, a in NODES.items() if n != node]
    return mesh.balance(
        mesh.MeshInput(
            ports={"web": (PORT, UDP)},
            local={"web": (TASK,)} if local else {},
            remote={"web": tuple(other)} if remote else {},
            members=tuple(other),
        )
    )


async def program(nft: Nft, c: Cluster, node: str, want: mesh.Mesh) -> int:
    path = c.path(node)
    have = mesh.parse(await nft.list_table(path, mesh.FAMILY, mesh.TABLE))
    cmds = mesh.plan(have, want)
    await nft.apply(path, cmds)
    return len(cmds)


async def test_a_published_port_answers_on_every_node_over_every_task(
    cluster: Cluster, nft: Nft
) -> None:
    for node in NODES:
        assert await program(nft, cluster, node, view(node)) > 0
        assert await program(nft, cluster, node, view(node)) == 0  # the listing matches
    for node, address in NODES.items():
        answers = cluster.connect("c", address, 40)
        assert len(answers) == 40 and "refused" not in answers, answers
        other = next(n for n in NODES if n != node)
        # the local task sees the client; the other node's task sees this node's address
        assert set(answers) == {f"task-{node} {CLIENT}", f"task-{other} {address}"}, answers
        # UDP too, each datagram from a new source port: a new flow, balanced alike
        datagrams = cluster.connect("c", address, 40, UDP)
        assert set(datagrams) == {f"task-{node} {CLIENT}", f"task-{other} {address}"}, datagrams
    # a node's own connection to loopback is left alone (refused here: nobody listens)
    assert cluster.connect("a", IPv4Address("127.0.0.1"), 2) == ["refused", "refused"]
    # from a node itself, to its own address and to the other node's
    for node in NODES:
        for address in NODES.values():
            answers = cluster.connect(node, address, 20)
            assert answers and all(a.startswith("task-") for a in answers), (node, answers)


async def test_no_task_refuses_and_a_members_connection_is_not_passed_on(
    cluster: Cluster, nft: Nft
) -> None:
    # b's task is gone, and a has not heard yet (it still sends b a share)
    await program(nft, cluster, "a", view("a"))
    await program(nft, cluster, "b", view("b", local=False))
    answers = cluster.connect("c", NODES["a"], 40)
    assert {a for a in answers if a != "refused"} == {f"task-a {CLIENT}"}, answers
    assert "refused" in answers, answers  # a's share sent to b: b refuses, no second hop
    # b itself still balances a client's connection, to the task on a
    assert set(cluster.connect("c", NODES["b"], 10)) == {f"task-a {NODES['b']}"}
    # no task anywhere: no table, and the port is refused at once (not left hanging)
    for node in NODES:
        await program(nft, cluster, node, view(node, local=False, remote=False))
        assert await nft.list_table(cluster.path(node), mesh.FAMILY, mesh.TABLE) is None
    assert set(cluster.connect("c", NODES["a"], 3)) == {"refused"}


async def test_drift_made_with_the_nft_tool_is_seen_and_repaired(
    cluster: Cluster, nft: Nft
) -> None:
    for node in NODES:
        await program(nft, cluster, node, view(node))
    ns = cluster.ns("a")
    sh("ip", "netns", "exec", ns, "nft", "flush", "chain", "ip", mesh.TABLE, "to-tcp-1080-1")
    assert await program(nft, cluster, "a", view("a")) > 0
    assert await program(nft, cluster, "a", view("a")) == 0
    answers = cluster.connect("c", NODES["a"], 30)
    assert set(answers) == {f"task-a {CLIENT}", f"task-b {NODES['a']}"}, answers
