"""Namespaced "nodes" for the routing mesh's kernel tests (tests/kernel, and the IPsec
tier's ESP hop): two nodes on one underlay bridge, each with a docker_gwbridge-like
bridge and one task behind it (both tasks at 172.18.0.2, as on two Docker hosts),
and a client on the underlay. Everything is made under the test's unique prefix and
removed, processes by the handle that started them, even when the test fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from netprobe import BULK_CLIENT, BULK_SERVER, SERVER, TCP_LOOP, UDP_LOOP

from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.servicelb import meshrules as mesh

UL = "192.168.77"
NODES = {"a": IPv4Address(f"{UL}.1"), "b": IPv4Address(f"{UL}.2")}
CLIENT = f"{UL}.9"
TASK = IPv4Address("172.18.0.2")
PORT = mesh.PublishedPort("tcp", 1080, 7000)
UDP = mesh.PublishedPort("udp", 1053, 7053)
BULK = mesh.PublishedPort("tcp", 1081, 7001)  # reads a connection to EOF, says how much
BULK_BYTES = 1 << 20


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

    def fetch(self, from_ns: str, to: IPv4Address) -> str:
        """BULK_BYTES sent over one connection to the published BULK port (full-size
        segments from the client): how many bytes the task says it read, or "error ..."."""
        cmd = ["ip", "netns", "exec", self.ns(from_ns), sys.executable, "-c", BULK_CLIENT]
        out = subprocess.run([*cmd, str(to), str(BULK.published), str(BULK_BYTES)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        return out.stdout.strip()


@contextmanager
def mesh_nodes(prefix: str) -> Iterator[Cluster]:
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
            bulk = subprocess.Popen(
                ["ip", "netns", "exec", task, sys.executable, "-c", BULK_SERVER],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(bulk)
            assert bulk.stdout is not None and bulk.stdout.readline().strip() == "ready"
        yield c
    finally:
        for server in servers:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def view(node: str, local: bool = True, remote: bool = True, secure: bool = False) -> mesh.Mesh:
    other = [a for n, a in NODES.items() if n != node]
    return mesh.balance(
        mesh.MeshInput(
            ports={"web": (PORT, UDP, BULK)},
            local={"web": (TASK,)} if local else {},
            remote={"web": tuple(other)} if remote else {},
            members=tuple(other),
            secure=frozenset({"web"}) if secure else frozenset(),
        )
    )


async def program(nft: Nft, c: Cluster, node: str, want: mesh.Mesh) -> int:
    path = c.path(node)
    have = mesh.parse(await nft.list_table(path, mesh.FAMILY, mesh.TABLE))
    cmds = mesh.plan(have, want)
    await nft.apply(path, cmds)
    return len(cmds)
