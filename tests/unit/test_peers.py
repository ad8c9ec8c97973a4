"""Peer programming: table rows -> FDB/ARP entries, state-based and order-independent."""

from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.cluster.table import Table
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.ops import (
    CreateNamespace,
    DeleteFdb,
    DeleteNeigh,
    EnsureBridge,
    EnsureVxlan,
    ReplaceFdb,
    ReplaceNeigh,
)
from pyoverlay.driver.overlay import peers
from testing.fakes import FakeKernel

LOCAL = IPv4Address("192.0.2.1")
HOSTS = {"h2": IPv4Address("192.0.2.2"), "h3": IPv4Address("192.0.2.3")}


def remote(eid: str, ip: str, mac: str, vtep: str, version: int) -> peers.RemoteEndpoint:
    return peers.RemoteEndpoint(eid, IPv4Address(ip), mac, IPv4Address(vtep), (version, "n"))


def test_remote_endpoints_become_fdb_and_neighbour_entries() -> None:
    want = peers.desired(
        [
            remote("e1", "10.0.0.2", "02:42:0a:00:00:02", "192.0.2.2", 1),
            remote("e2", "10.0.0.3", "02:42:0a:00:00:03", "192.0.2.1", 1),  # ours: skipped
        ],
        LOCAL,
    )
    assert want == PeerEntries(
        fdb={"02:42:0a:00:00:02": IPv4Address("192.0.2.2")},
        neigh={IPv4Address("10.0.0.2"): "02:42:0a:00:00:02"},
    )


def test_a_dual_stack_endpoint_gets_an_ipv6_neighbour_beside_its_arp_entry() -> None:
    mac = "02:42:0a:00:00:02"
    row = peers.row_value(IPv4Address("10.0.0.2"), mac, HOSTS["h2"], ip6=IPv6Address("fd00:100::2"))
    assert row["ip6"] == "fd00:100::2"
    r = peers.RemoteEndpoint.from_row("e1", row, (1, "n"))
    assert r is not None and r.ip6 == IPv6Address("fd00:100::2")
    want = peers.desired([r], LOCAL)
    assert want.neigh == {IPv4Address("10.0.0.2"): mac, IPv6Address("fd00:100::2"): mac}
    assert want.fdb == {mac: HOSTS["h2"]}  # one MAC, one FDB entry for both families
    # a stale IPv6 entry beside IPv4 ones: diff sorts mixed families, deletes it, adds ours
    have = PeerEntries(
        fdb={mac: HOSTS["h2"]},
        neigh={IPv4Address("10.0.0.2"): mac, IPv6Address("fd00:100::9"): mac},
    )
    ops = peers.diff("ns", "vx", have, want)
    assert ops == [
        DeleteNeigh("ns", "vx", IPv6Address("fd00:100::9")),
        ReplaceNeigh("ns", "vx", IPv6Address("fd00:100::2"), mac),
    ]
    # an IPv4-only row stays as it was (older plugins' rows have no ip6)
    assert "ip6" not in peers.row_value(IPv4Address("10.0.0.2"), mac, HOSTS["h2"])


def test_a_reused_ip_goes_to_the_newest_row() -> None:
    old = remote("e1", "10.0.0.2", "02:42:0a:00:00:02", "192.0.2.2", 1)
    new = remote("e9", "10.0.0.2", "02:42:aa:00:00:02", "192.0.2.3", 2)
    for order in ([old, new], [new, old]):
        want = peers.desired(order, LOCAL)
        assert want.neigh == {IPv4Address("10.0.0.2"): "02:42:aa:00:00:02"}
        assert set(want.fdb) == {"02:42:0a:00:00:02", "02:42:aa:00:00:02"}


def test_diff_replaces_wrong_and_deletes_extra_entries() -> None:
    have = PeerEntries(
        fdb={
            "02:00:00:00:00:01": IPv4Address("192.0.2.9"),
            "02:00:00:00:00:02": IPv4Address("192.0.2.2"),
        },
        neigh={IPv4Address("10.0.0.9"): "02:00:00:00:00:09"},
    )
    want = PeerEntries(
        fdb={"02:00:00:00:00:01": IPv4Address("192.0.2.3")},
        neigh={IPv4Address("10.0.0.1"): "02:00:00:00:00:01"},
    )
    assert peers.diff("ns", "vx", have, want) == [
        DeleteNeigh("ns", "vx", IPv4Address("10.0.0.9")),
        DeleteFdb("ns", "vx", "02:00:00:00:00:01", IPv4Address("192.0.2.9")),
        DeleteFdb("ns", "vx", "02:00:00:00:00:02", IPv4Address("192.0.2.2")),
        ReplaceFdb("ns", "vx", "02:00:00:00:00:01", IPv4Address("192.0.2.3")),
        ReplaceNeigh("ns", "vx", IPv4Address("10.0.0.1"), "02:00:00:00:00:01"),
    ]
    assert peers.diff("ns", "vx", want, want) == []


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(sorted(HOSTS)),
        st.integers(0, 4),  # endpoint number on that host
        st.booleans(),  # add (True) or delete
    ),
    min_size=1,
    max_size=30,
)


def rows_from(events) -> list[dict]:
    owners = {h: Table(h, 1800.0) for h in HOSTS}
    out = []
    for t, (host, n, add) in enumerate(events):
        value = (
            peers.row_value(
                IPv4Address(f"10.0.{n}.{ord(host[1])}"),
                f"02:42:00:00:{n:02x}:{ord(host[1]):02x}",
                HOSTS[host],
            )
            if add
            else None
        )
        out.append(
            owners[host].write(t / 1000, peers.scope(42), f"{host}-e{n}", value).wire(t / 1000)
        )
    return out


def program(rows: list[dict], kernel: FakeKernel) -> PeerEntries:
    table = Table("h1", 1800.0)
    for r in rows:
        table.merge(0.0, r)
    remotes = [
        peers.RemoteEndpoint.from_row(r.key, r.value or {}, r.version)
        for r in table.visible(peers.scope(42))
    ]
    want = peers.desired([r for r in remotes if r], LOCAL)

    async def run() -> PeerEntries:
        have = await kernel.peer_entries("1-ns", "vx")
        for op in peers.diff("1-ns", "vx", have, want):
            await kernel.apply(op)
        return await kernel.peer_entries("1-ns", "vx")

    return asyncio.run(run())


def fresh_kernel(junk: int) -> FakeKernel:
    k = FakeKernel()
    ops = [
        CreateNamespace("1-ns"),
        EnsureBridge("1-ns", "br0", 1450, None, "x"),
        EnsureVxlan("1-ns", "vx", 42, 4789, LOCAL, 1450, "br0"),
    ]
    for i in range(junk):  # drift: stale entries from an earlier life
        ops.append(ReplaceFdb("1-ns", "vx", f"02:00:00:00:99:{i:02x}", IPv4Address("192.0.2.99")))
        ops.append(ReplaceNeigh("1-ns", "vx", IPv4Address(f"10.99.0.{i}"), "02:00:00:00:99:00"))
    for op in ops:
        asyncio.run(k.apply(op))
    return k


@settings(max_examples=80, deadline=None)
@given(EVENTS, st.randoms(use_true_random=False), st.integers(0, 3), st.integers(0, 3))
def test_any_interleaving_or_duplication_ends_in_the_same_kernel_state(
    events, rnd: random.Random, dups: int, junk: int
) -> None:
    rows = rows_from(events)
    reference = program(rows, fresh_kernel(0))
    shuffled = rows + [rnd.choice(rows) for _ in range(dups * len(rows))]
    rnd.shuffle(shuffled)
    kernel = fresh_kernel(junk)
    # applied in several batches, as events trickle in
    cut = rnd.randint(0, len(shuffled))
    program(shuffled[:cut], kernel)
    assert program(shuffled, kernel) == reference


def test_entries_towards_a_silent_host_that_answers_are_kept_and_others_still_fixed() -> None:
    """h2's plugin is down but its kernel answers (hostcheck.py): its rows are hidden, yet
    its containers run, so their entries stay; h3's stale entry goes, and an address h2's
    container had that a newer row gives to h3's container moves."""
    h2, h3 = HOSTS["h2"], HOSTS["h3"]
    have = PeerEntries(
        fdb={"02:00:00:00:00:02": h2, "02:00:00:00:00:03": h3, "02:00:00:00:00:04": h2},
        neigh={
            IPv4Address("10.0.0.2"): "02:00:00:00:00:02",
            IPv4Address("10.0.0.3"): "02:00:00:00:00:03",
            IPv4Address("10.0.0.4"): "02:00:00:00:00:04",
        },
    )
    want = PeerEntries(
        fdb={"02:00:00:00:00:05": h3}, neigh={IPv4Address("10.0.0.4"): "02:00:00:00:00:05"}
    )
    ops = peers.diff("ns", "vx", have, want, prune=True, keep={h2})
    assert DeleteFdb("ns", "vx", "02:00:00:00:00:03", h3) in ops
    assert DeleteNeigh("ns", "vx", IPv4Address("10.0.0.3")) in ops
    assert ReplaceNeigh("ns", "vx", IPv4Address("10.0.0.4"), "02:00:00:00:00:05") in ops
    assert not [op for op in ops if isinstance(op, DeleteFdb) and op.dst == h2]
    assert DeleteNeigh("ns", "vx", IPv4Address("10.0.0.2")) not in ops
    # once h2's host stops answering, they go
    ops = peers.diff("ns", "vx", have, want, prune=True, keep=set())
    assert DeleteFdb("ns", "vx", "02:00:00:00:00:02", h2) in ops
    assert DeleteNeigh("ns", "vx", IPv4Address("10.0.0.2")) in ops
