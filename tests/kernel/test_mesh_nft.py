"""The routing mesh's table on the real kernel: two "nodes" (namespaces) on one
underlay, each with a docker_gwbridge-like bridge and one task behind it (both
tasks at 172.18.0.2, as on two Docker hosts), a client on the underlay
(tests/meshnodes.py).

What a user checks: a published port answers on either node's address from
the client and from a node itself, over both tasks; the local task sees the
client's address, the remote one the receiving node's; a node that receives a
member's connection without a task of its own refuses it (no second hop); no
task anywhere: refused, not left hanging; the kernel's listing matches the
plan (nothing to change), and drift made with the nft tool is seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from meshnodes import BULK_BYTES, CLIENT, NODES, UDP, Cluster, mesh_nodes, program, sh, view

from pyoverlay.driver.kernel.nft import Nft
from pyoverlay.driver.servicelb import meshrules as mesh

pytestmark = pytest.mark.kernel


@pytest.fixture
def cluster(prefix: str) -> Iterator[Cluster]:
    with mesh_nodes(prefix) as c:
        yield c


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
        # bulk data (full-size segments) through the node, to whichever task
        assert [cluster.fetch("c", address) for _ in range(4)] == [str(BULK_BYTES)] * 4
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
