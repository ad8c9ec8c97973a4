"""The routing mesh's hop between nodes for a service on an `-o encrypted` network, on a
kernel with ESP: namespaced nodes (tests/meshnodes.py), the mesh table as the plugin
builds it, and the SAs and policies as the IPsec keeper writes them (sa.py's lines).

What a user checks: the published port answers through a node without the task; on the
wire between the nodes there is ESP and no TCP or UDP of the service; without an SA the
hop is dropped, never sent in the clear; a clear packet from a member to an encrypted
service is dropped by the receiving node.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator

import pytest
from meshnodes import BULK_BYTES, NODES, UDP, Cluster, mesh_nodes, program, sh, view

from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.secure import sa as ipsec
from pyoverlay.driver.servicelb import meshrules as mesh

SECRET = b"pyoverlay-mesh-esp-test-key-0001"
A, B = NODES["a"], NODES["b"]


@pytest.fixture
def cluster(prefix: str, esp: None) -> Iterator[Cluster]:
    with mesh_nodes(prefix) as c:
        yield c


def xfrm(c: Cluster, node: str, lines: list[str]) -> None:
    """Feed `ip -batch` in a node's namespace on stdin (keys never on a command line)."""
    cmd = ["ip", "-n", c.ns(node), "-force", "-batch", "-"]
    subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, check=True)


def keyed(c: Cluster, sender: str) -> None:
    """One direction as the keepers install it: the sender's outbound SA and its mesh
    policy towards the other node, the same SA inbound on the other node."""
    receiver = "b" if sender == "a" else "a"
    local, peer = NODES[sender], NODES[receiver]
    sa = ipsec.derive(SECRET, local, peer, "00" * 8, 0)
    xfrm(c, receiver, [ipsec.state_add_line(sa, 2**31)])
    xfrm(
        c,
        sender,
        [
            ipsec.state_add_line(sa, 2**31),
            ipsec.policy_line("update", local, peer, ipsec.MESH_PORT),
        ],
    )


class Wire:
    """tcpdump on the underlay bridge: what crossed between the two nodes."""

    def __init__(self, c: Cluster) -> None:
        cmd = ["ip", "netns", "exec", c.ns("ul"), "tcpdump", "-lni", "br-ul", "-U"]
        cmd += [f"host {A} and host {B}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        said: list[str] = []  # a notice may come first; "listening on": capturing now
        while len(said) < 3 and not any("listening on" in x for x in said):
            said.append(self.proc.stderr.readline())
        assert "listening on" in said[-1], said

    def stop(self) -> list[str]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return out.splitlines()


def clear(lines: list[str]) -> list[str]:
    """The service's packets between the nodes in the clear (TCP or UDP, not ESP)."""
    return [x for x in lines if re.search(r": (Flags|UDP)|\.1080 |\.1053 ", x)]


def plain_drops(c: Cluster, node: str) -> int:
    out = sh("ip", "netns", "exec", c.ns(node), "nft", "list", "counter", "ip", mesh.TABLE,
             mesh.PLAIN_COUNTER)  # fmt: skip
    m = re.search(r"packets (\d+)", out)
    return int(m[1]) if m else 0


async def test_an_encrypted_services_hop_between_nodes_is_esp_or_nothing(
    cluster: Cluster, nft: Nft
) -> None:
    # node a has no task of its own (every connection it receives goes to b's task)
    await program(nft, cluster, "a", view("a", local=False, secure=True))
    await program(nft, cluster, "b", view("b", secure=True))
    # no SA yet: a drops the hop rather than send it in the clear
    wire = Wire(cluster)
    assert all(a.startswith("error") for a in cluster.connect("c", A, 2)), "answered in clear"
    lines = wire.stop()
    assert clear(lines) == [], lines
    assert plain_drops(cluster, "a") >= 2
    # a -> b only: b's task gets the connection in ESP, but b has nothing to answer with
    # in ESP: its replies are dropped, never sent in the clear
    keyed(cluster, "a")
    before = plain_drops(cluster, "b")
    wire = Wire(cluster)
    assert all(a.startswith("error") for a in cluster.connect("c", A, 2)), "answered in clear"
    lines = wire.stop()
    assert clear(lines) == [], lines
    assert any(f"{A} > {B}: ESP" in x for x in lines), lines
    assert plain_drops(cluster, "b") > before
    # both ways, as the keepers install them: the hop goes ESP
    keyed(cluster, "b")
    wire = Wire(cluster)
    answers = cluster.connect("c", A, 10)
    udp = cluster.connect("c", A, 5, UDP)
    own = cluster.connect("a", A, 3)  # node a's own connection (output path)
    # bulk data: full-size segments plus ESP exceed the underlay MTU, and the client
    # never learns the path MTU behind the NAT: without the hop's lowered MSS this
    # stalled at 0 bytes while connection setup worked
    bulk = cluster.fetch("c", A)
    lines = wire.stop()
    assert bulk == str(BULK_BYTES), bulk
    assert answers == [f"task-b {A}"] * 10, answers  # b's task sees node a's address
    assert udp == [f"task-b {A}"] * 5, udp
    assert own == [f"task-b {A}"] * 3, own
    assert clear(lines) == [], lines
    esp = [x for x in lines if "ESP(spi=" in x]
    assert any(f"{A} > {B}: ESP" in x for x in esp) and any(f"{B} > {A}: ESP" in x for x in esp)
    # a member's clear connection to the encrypted service: b drops it before delivery
    before = plain_drops(cluster, "b")
    sh("ip", "netns", "exec", cluster.ns("a"), "nft", "delete", "table", "ip", mesh.TABLE)
    assert all(a.startswith("error") for a in cluster.connect("a", B, 2))
    assert plain_drops(cluster, "b") >= before + 2
