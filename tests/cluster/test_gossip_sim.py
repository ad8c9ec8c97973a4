"""Gossip on the simulated network (fake clock): membership, rows, failures, partitions.

Times are virtual seconds; each test runs in well under a second of real
time except the 200-node one.  Targets come from the issue: a crashed
host's rows gone within 5 s, no false alarm for a 2 s stall, a healed
partition converges, lost messages are repaired by push-pull.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.membership import ALIVE, DEAD, LEFT, MemberEvent
from pyoverlay.cluster.node import GossipNode
from pyoverlay.cluster.table import RowEvent
from testing.sim import SimNetwork

# the networks (peer/<vni> rows) these tests use: every node takes part in all of them
EVERYWHERE = ("1", "2", "3", "7", "9", "4097")


def cluster(
    n: int,
    loss: float = 0.0,
    seed: int = 1,
    config: GossipConfig | None = None,
    nets: tuple[str, ...] = EVERYWHERE,
):
    net = SimNetwork(seed=seed, loss=loss, config=config or GossipConfig.lan())
    nodes = [net.add_node(f"n{i}") for i in range(n)]
    for x in nodes:
        for vni in nets:
            x.join_network(net.now, vni)
    net.join_all()
    net.run_while(lambda: any(len(x.alive_members()) < n for x in nodes), limit=30)
    return net, nodes


def status(observer: GossipNode, name: str) -> str:
    return observer.members.by_name[name].status


def sees(node: GossipNode, scope: str, key: str) -> bool:
    return any(r.key == key for r in node.table.visible(scope))


@pytest.mark.parametrize(("n", "loss"), [(10, 0.0), (50, 0.05)])
def test_members_and_rows_converge(n: int, loss: float) -> None:
    net, nodes = cluster(n, loss)
    nodes[1].publish(net.now, "peer/4097", "ep1", {"ip": "10.0.0.2", "mac": "02:42:0a:00:00:02"})
    took = net.run_while(lambda: not all(sees(x, "peer/4097", "ep1") for x in nodes), limit=5)
    assert took < 1.5
    nodes[1].withdraw(net.now, "peer/4097", "ep1")
    net.run_while(lambda: any(sees(x, "peer/4097", "ep1") for x in nodes), limit=5)
    assert all(x.table.rows[("peer/4097", "ep1")].value is None for x in nodes)  # tombstones


def test_crashed_node_is_detected_within_5s_and_its_rows_vanish() -> None:
    net, nodes = cluster(5)
    victim = nodes[4]
    victim.publish(net.now, "peer/1", "v", {"ip": "10.0.0.9"})
    net.run_while(lambda: not all(sees(x, "peer/1", "v") for x in nodes), limit=5)
    for x in nodes:
        x.events()
    net.crash(victim)
    took = net.run_while(lambda: any(sees(x, "peer/1", "v") for x in net.live()), limit=20)
    assert took <= 5.0, took
    for x in net.live():
        assert status(x, "n4") == DEAD
        assert RowEvent("peer/1", "v", "n4", None) in x.events()


def test_a_node_stalled_for_2s_is_not_declared_dead() -> None:
    net, nodes = cluster(5)
    for x in nodes:
        x.events()
    net.stall(nodes[2], 2.0)
    net.run_for(15.0)
    for x in nodes:
        deaths = [e for e in x.events() if isinstance(e, MemberEvent) and e.status == DEAD]
        assert deaths == [], (x.name, deaths)
    assert all(status(x, "n2") == ALIVE for x in nodes if x is not nodes[2])


def test_partition_heals_with_no_stale_or_missing_rows() -> None:
    net, nodes = cluster(10, loss=0.02)
    for i, x in enumerate(nodes):
        x.publish(net.now, "peer/7", f"e{i}", {"ip": f"10.7.0.{i + 2}"})
    left = {f"n{i}" for i in range(5)}
    right = {f"n{i}" for i in range(5, 10)}
    net.partition(left, right)
    net.run_for(20.0)
    assert status(nodes[0], "n7") == DEAD and status(nodes[7], "n0") == DEAD
    assert {r.key for r in nodes[0].table.visible("peer/7")} == {f"e{i}" for i in range(5)}
    # changes on both sides while cut off
    nodes[1].withdraw(net.now, "peer/7", "e1")
    nodes[8].publish(net.now, "peer/7", "e8", {"ip": "10.7.0.99"})
    net.heal()
    want = {f"e{i}" for i in range(10)} - {"e1"}

    def converged() -> bool:
        return all(
            {r.key for r in x.table.visible("peer/7")} == want
            and x.table.rows[("peer/7", "e8")].value == {"ip": "10.7.0.99"}
            and all(m.status == ALIVE for m in x.members.by_name.values())
            for x in nodes
        )

    took = net.run_while(lambda: not converged(), limit=30)
    assert took < 10, took


def test_graceful_leave_is_immediate() -> None:
    net, nodes = cluster(5)
    nodes[3].publish(net.now, "peer/1", "x", {"ip": "10.0.0.3"})
    net.run_for(1.0)
    nodes[3].leave(net.now)
    net._flush(nodes[3])
    took = net.run_while(lambda: any(status(x, "n3") != LEFT for x in nodes[:3]), limit=5)
    assert took < 1.0
    assert not any(sees(x, "peer/1", "x") for x in nodes[:3])


def test_lost_gossip_is_repaired_by_push_pull() -> None:
    config = replace(GossipConfig.lan(), pushpull_interval=5.0)
    net, nodes = cluster(6, config=config)
    net.loss = 1.0  # every UDP packet is lost while the update is gossiped
    nodes[0].publish(net.now, "peer/2", "late", {"ip": "10.2.0.2"})
    net.run_for(1.5)  # past its retransmit budget, too short for anyone to be suspected dead
    net.loss = 0.0
    assert not all(sees(x, "peer/2", "late") for x in nodes)
    assert not nodes[0].queue  # gossip gave up on it: only anti-entropy can deliver it now
    took = net.run_while(lambda: not all(sees(x, "peer/2", "late") for x in nodes), limit=30)
    assert took <= 5.0 * 1.25


def test_restarted_node_reclaims_its_name_and_drops_rows_it_no_longer_has() -> None:
    net, nodes = cluster(4)
    old = nodes[3]
    old.publish(net.now, "peer/3", "gone", {"ip": "10.3.0.2"})
    old.publish(net.now, "peer/3", "kept", {"ip": "10.3.0.3"})
    net.run_for(2.0)
    net.crash(old)
    net.run_for(1.0)  # restarted before anyone noticed
    del net.nodes[old.addr]
    net.down.discard(old.addr)
    new = net.add_node("n3")
    new.publish(net.now, "peer/3", "kept", {"ip": "10.3.0.3"})
    new.start(net.now, [nodes[0].addr])
    net._flush(new)

    def settled() -> bool:
        return all(
            not sees(x, "peer/3", "gone") and sees(x, "peer/3", "kept") for x in nodes[:3] + [new]
        ) and all(status(x, "n3") == ALIVE for x in nodes[:3])

    net.run_while(lambda: not settled(), limit=10)
    assert new.members.me.inc > 0  # it refuted its previous life


@pytest.mark.parametrize("saved", [True, False], ids=["incarnation-saved", "no-saved-state"])
def test_a_node_restarted_after_being_declared_dead_is_back_within_a_round_trip(
    saved: bool,
) -> None:
    """The plugin was down longer than failure detection: the others hide its rows (and drop
    its containers' traffic). Back with its saved incarnation + 1, its join push-pull
    itself revives it on the partner (one trip); with no saved state, the partner's reply
    says "dead", and the refutation goes back at once, not at the next gossip round."""
    latency = (0.001, 0.002)
    net = SimNetwork(seed=3, latency=latency)
    nodes = [net.add_node(f"n{i}") for i in range(3)]
    for x in nodes:
        x.join_network(net.now, "3")
    net.join_all()
    net.run_while(lambda: any(len(x.alive_members()) < 3 for x in nodes), limit=30)
    old = nodes[2]
    old.publish(net.now, "peer/3", "ep", {"ip": "10.3.0.3"})
    net.run_for(1.0)
    net.crash(old)
    net.run_while(lambda: any(status(x, "n2") != DEAD for x in nodes[:2]), limit=30)
    assert not any(sees(x, "peer/3", "ep") for x in nodes[:2])  # hidden while dead
    net.run_for(0.3)  # anywhere in the gossip cycle
    new = net.restart(old, old.members.me.inc + 1 if saved else 0)
    new.join_network(net.now, "3")
    new.publish(net.now, "peer/3", "ep", {"ip": "10.3.0.3"})
    net.start(new, [nodes[0].addr])
    took = net.run_while(lambda: not sees(nodes[0], "peer/3", "ep"), limit=5, check_every=0.0005)
    trips = 1 if saved else 1.5
    assert took <= trips * 2 * latency[1] + 0.001, took
    assert status(nodes[0], "n2") == ALIVE
    net.run_while(lambda: not sees(nodes[1], "peer/3", "ep"), limit=1)  # then by gossip


@pytest.mark.parametrize("size", [100, 3000], ids=["small-rows", "rows-over-the-packet-budget"])
def test_rows_too_large_for_a_packet_spread_as_fast_as_small_ones(size: int) -> None:
    """An encrypted network's IPsec row grows ~21 bytes per peer and passes the 1,280
    bytes a packet carries at ~55 peers; a host's subscription row passes it at ~120
    networks. Such rows go by stream to gossip_nodes members per round (not only by
    push-pull every 30 s): with 5 % loss, every one of 50 hosts has each within the
    small rows' bound, and no packet is over the budget (the simulator drops those)."""
    net, nodes = cluster(50, loss=0.05, seed=11)
    pending: dict[tuple[str, str], float] = {}
    took: list[float] = []
    for k in range(8):
        for scope in ("peer/9", "ipsec"):  # a network's row, a global one
            key = f"r{k}"
            nodes[net.rng.randrange(50)].publish(net.now, scope, key, {"pad": "x" * size})
            pending[(scope, key)] = net.now
        for _ in range(10):
            net.run_for(0.05)
            for sk in [sk for sk in pending if all(sees(x, *sk) for x in nodes)]:
                took.append(net.now - pending.pop(sk))
    net.run_while(lambda: any(not all(sees(x, *sk) for x in nodes) for sk in pending), limit=60)
    took += [net.now - t for t in pending.values()]
    assert len(took) == 16 and max(took) < 1.5, sorted(took)
    assert sum(st.oversized for st in net.stats.values()) == 0
    assert all(x.never_fit == 0 for x in nodes)


def test_a_seed_that_was_down_when_the_others_joined_still_joins_them() -> None:
    """Three hosts boot together: n0 (the first, no --join) is not up yet when n1 and n2
    try it, so they join each other. When n0 is up, they must still reach it: a seed no
    member answers for is retried (n0 itself knows nobody to ask)."""
    net = SimNetwork(seed=5)
    n0, n1, n2 = (net.add_node(f"n{i}") for i in range(3))
    net.crash(n0)  # not up yet
    net.start(n1, [n0.addr, n2.addr])
    net.start(n2, [n0.addr, n1.addr])
    net.run_while(lambda: len(n1.alive_members()) < 2, limit=10)
    net.down.discard(n0.addr)  # n0 is up (it never had anyone to join)
    took = net.run_while(lambda: any(len(x.alive_members()) < 3 for x in (n0, n1, n2)), limit=30)
    assert took <= 2 * net.config.reconnect_interval + 1, took


def test_200_nodes_with_5_percent_loss_p99_under_1s_and_no_false_death() -> None:
    """Issue 12's target: 60 rows published from random hosts, one every 0.5 s, under 5 %
    packet loss; every one reaches all 200 hosts within 1 s (so p99 <= 1 s), and no live
    host is ever declared dead."""
    net, nodes = cluster(200, loss=0.05, seed=7)
    for x in nodes:
        x.events()  # what the join produced
    pending: dict[str, float] = {}
    took: list[float] = []
    for k in range(60):
        key = f"k{k}"
        nodes[net.rng.randrange(200)].publish(net.now, "peer/9", key, {"ip": f"10.9.0.{k}"})
        pending[key] = net.now
        for _ in range(10):
            net.run_for(0.05)
            for key in [k_ for k_ in pending if all(("peer/9", k_) in x.table.rows for x in nodes)]:
                took.append(net.now - pending.pop(key))
    net.run_while(
        lambda: any(not all(("peer/9", k_) in x.table.rows for x in nodes) for k_ in pending),
        limit=30,
    )
    took += [net.now - t for t in pending.values()]
    assert len(took) == 60 and max(took) <= 1.0, sorted(took)[-5:]
    deaths = [e for x in nodes for e in x.events() if isinstance(e, MemberEvent)]
    assert not [e for e in deaths if e.status == DEAD], deaths
