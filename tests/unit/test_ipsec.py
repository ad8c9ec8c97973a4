"""IPsec for encrypted networks: key derivation, SA numbering, and rotation without loss.

The rotation tests run two keepers (driver/encryption.py) against a simulated
xfrm table each (states carry their key; a packet is lost when the receiver
has no state with the sender's SPI and key) on a fake clock, with the real
planner and a shared table of `ipsec` rows.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from pyoverlay.driver.kernel.xfrm import parse_policies, parse_states
from pyoverlay.driver.secure import guard
from pyoverlay.driver.secure import sa as ipsec
from pyoverlay.driver.secure.keeper import Encryption, Inputs
from pyoverlay.driver.secure.sa import InstalledSa, Published, Sending
from testing.ipsec_sim import NoTables, SharedRows, SimXfrm, SimXfrmAdapter

A, B, C = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
K1, K2 = b"k" * 32, b"j" * 32


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = ipsec.hkdf(bytes([0x0B] * 22), bytes(range(0xF0, 0xFA)), 42, salt=bytes(range(0x0D)))
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_both_ends_derive_the_same_sa_and_every_input_changes_it() -> None:
    sa = ipsec.derive(K1, A, B, "00112233", 5)
    assert (
        sa == ipsec.derive(K1, A, B, "00112233", 5)
        and sa.key == ipsec.derive(K1, A, B, "00112233", 5).key
    )
    assert len(sa.key) == ipsec.KEY_BYTES and sa.spi >= ipsec.SPI_MIN
    others = [
        ipsec.derive(K2, A, B, "00112233", 5),  # another ring key
        ipsec.derive(K1, B, A, "00112233", 5),  # the other direction
        ipsec.derive(K1, A, C, "00112233", 5),  # another peer
        ipsec.derive(K1, A, B, "00112234", 5),  # another salt (sender's kernel state lost)
        ipsec.derive(K1, A, B, "00112233", 6),  # the next SA number
    ]
    assert len({o.key for o in others} | {sa.key}) == 6
    assert len({o.spi for o in others} | {sa.spi}) == 6
    assert "key" not in repr(sa).replace("key_id", "")  # never logged


def test_next_sending_moves_on_for_age_packets_key_and_a_lost_sa() -> None:
    cur = Sending(3, 100.0, "k1")
    live = InstalledSa(A, B, 1, packets=10)
    step = ipsec.next_sending
    assert step(None, None, "k1", 100.0, 60, 1000) == Sending(0, 100.0, "k1")
    assert step(cur, live, "k1", 150.0, 60, 1000) is cur
    assert step(cur, live, "k1", 160.0, 60, 1000) == Sending(4, 160.0, "k1")  # 60 s old
    assert step(cur, InstalledSa(A, B, 1, packets=1000), "k1", 101, 60, 1000).n == 4
    assert step(cur, live, "k2", 101.0, 60, 1000).n == 4  # the first key changed
    assert step(cur, None, "k1", 101.0, 60, 1000).n == 4  # never re-add a used key


def test_receivers_install_around_what_the_sender_publishes_for_every_ring_key() -> None:
    peer = Published(B, "aabbccdd", {str(A): 7})
    got = ipsec.wanted_inbound([K1, K2], A, [peer, Published(A, "00000000")])
    assert [(s.n, s.key_id) for s in got] == [
        (n, ipsec.key_id(k)) for k in (K1, K2) for n in range(6, 7 + ipsec.LOOKAHEAD + 1)
    ]
    assert {(s.src, s.dst) for s in got} == {(B, A)}


def test_published_rows_from_other_hosts_are_checked() -> None:
    good = Published(B, "aabbccdd", {str(A): 1})
    assert Published.from_json(good.to_json()) == good
    for bad in (
        {"vtep": "x", "salt": "aabbccdd"},
        {"vtep": "10.0.0.2", "salt": "NOT-HEX!"},
        {"vtep": "10.0.0.2", "salt": "aabbccdd", "tx": {"10.0.0.1": "many"}},
        {"vtep": "10.0.0.2", "salt": "aabbccdd", "tx": {str(i): 1 for i in range(5000)}},
        {"salt": "aabbccdd"},
    ):
        assert Published.from_json(bad) is None


def test_diff_adds_before_it_deletes_and_keeps_a_hidden_members_sas() -> None:
    want = [ipsec.derive(K1, B, A, "aabbccdd", 1)]
    old = InstalledSa(B, A, 999)
    hidden = InstalledSa(C, A, 777)
    ch = ipsec.diff_sas(want, [old, hidden], keep=[C])
    assert ch.add == want and ch.delete == [old]


def test_guard_table_drops_plain_vxlan_of_encrypted_vnis_and_non_members() -> None:
    cmds = guard.guard_commands(4789, [300, 100], [B, A], [300, 100, 500])
    text = repr(cmds)

    assert cmds[0] == {"add": {"table": {"family": "inet", "name": guard.GUARD_TABLE}}}
    assert "'10.0.0.1', '10.0.0.2'" in text and "@members" in text
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    vnis = [e["match"]["right"] for r in rules for e in r["expr"] if "th" in repr(e)]
    assert sorted(set(vnis)) == [100, 300, 500]
    # admission: a non-member's VXLAN is dropped for pyoverlay's own VNIs only
    assert [r["expr"][0]["match"]["right"] for r in rules if r["chain"] == "non-member"] == [
        100,
        300,
        500,
    ]
    # per encrypted VNI: mark (out), accept-if-ipsec then drop in each direction
    assert [r["chain"] for r in rules].count("mark") == 2
    assert [r["chain"] for r in rules].count("out") == 4
    assert [r["chain"] for r in rules].count("in") == 5  # + the admission rule
    assert "saddr" not in repr(guard.guard_commands(4789, [100], None, [100]))  # admission off
    assert "saddr" not in repr(guard.guard_commands(4789, [], [A], []))  # no network of ours


def test_iproute2_listings_are_parsed_without_keeping_keys() -> None:
    text = (
        "src 10.0.0.2 dst 10.0.0.1\n"
        "\tproto esp spi 0x00002001(8193) reqid 7960037(0x007975e5) mode transport\n"
        "\treplay-window 32 seq 0x00000000 flag  (0x00000000)\n"
        "\taead rfc4106(gcm(aes)) 0x0102 128\n"
        "\tlifetime current:\n"
        "\t  1200(bytes), 12(packets)\n"
        "\t  add 2026-11-27 17:17:12 use 2026-11-27 17:17:12\n"
        "src 10.0.0.1 dst 10.0.0.2\n"
        "\tproto esp spi 0x00000100(256) reqid 1(0x00000001) mode transport\n"
    )
    (sa,) = parse_states(text.replace("7960037", str(ipsec.REQID)))
    assert (sa.src, sa.dst, sa.spi, sa.packets) == (B, A, 0x2001, 12) and sa.added > 0
    pol = (
        "src 10.0.0.1/32 dst 10.0.0.2/32 proto udp dport 4789 \n\tdir out priority 0 \n"
        f"\tmark {ipsec.MARK:#x}/0xffffffff \n\ttmpl src 10.0.0.1 dst 10.0.0.2\n"
        "src 10.0.0.1/32 dst 10.0.0.3/32 proto udp dport 4789 \n\tdir out priority 0 \n"
        "\tmark 0xd0c4e3/0xffffffff \n"  # Docker's, not ours
    )
    mesh = (
        "src 10.0.0.1/32 dst 10.0.0.3/32 \n\tdir out priority 0 \n"
        f"\tmark {ipsec.MESH_MARK:#x}/0xffffffff \n\ttmpl src 10.0.0.1 dst 10.0.0.3\n"
        "src 10.0.0.1/32 dst 10.0.0.2/32 \n\tdir out priority 0 \n"
        f"\tmark {ipsec.MARK:#x}/0xffffffff \n"  # VXLAN's mark without VXLAN's port: not ours
    )
    assert parse_policies(pol + mesh) == [(A, B, 4789), (A, C, ipsec.MESH_PORT)]
    # where /etc/protocols is missing (the managed plugin's rootfs) iproute2 prints numbers
    assert parse_policies(pol.replace("proto udp", "proto 17")) == [(A, B, 4789)]
    line = ipsec.policy_line("update", A, C, ipsec.MESH_PORT)
    assert f"src {A}/32 dst {C}/32 mark {ipsec.MESH_MARK:#x} " in line and " proto 17 " not in line
    # UDP by number: a name needs /etc/protocols, which that rootfs lacks
    assert " proto 17 dport 4789 " in ipsec.policy_line("update", A, B, 4789)


# -- two keepers, simulated kernels, a fake clock --------------------------------------


class GossipedRows:
    """The `ipsec` scope as gossip delivers it: another host's write becomes visible
    `delay` seconds after it was made; every `lose`-th write is lost by gossip and comes
    only with the next anti-entropy exchange (`repair` seconds later, 30 by default) or
    a later write; a host sees its own writes at once."""

    def __init__(self, delay: float, lose: int = 0, repair: float = 30.0) -> None:
        self.delay, self.lose, self.repair = delay, lose, repair
        self.clock = 0.0
        self.writes: list[tuple[float, str, dict[str, Any], bool]] = []

    def view(self, me: str) -> RowsView:
        return RowsView(self, me)


class RowsView:
    def __init__(self, store: GossipedRows, me: str) -> None:
        self.store, self.me = store, me

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        st = self.store
        lost = bool(st.lose) and (len(st.writes) + 1) % st.lose == 0
        st.writes.append((st.clock, key, value, lost))

    def withdraw(self, scope: str, key: str) -> None:
        pass

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        st, seen = self.store, {}
        for at, key, value, lost in st.writes:
            if key == self.me or at + st.delay + (st.repair if lost else 0) <= st.clock:
                seen[key] = value
        return [(k, v, (0, k)) for k, v in seen.items()]


def keeper(
    tmp: Path,
    name: str,
    vtep: IPv4Address,
    sim: SimXfrm,
    rows: SharedRows,
    ring: list[bytes],
    rekey: int = 10**9,
) -> Encryption:
    enc = Encryption(
        SimXfrmAdapter(sim),
        NoTables(),
        tmp / f"{name}.json",
        vtep,
        4789,
        name,
        rotation=60.0,
        rekey_packets=rekey,
    )
    enc.inputs = Inputs(
        ring=lambda: ring,
        members=lambda: [A, B],
        encrypted_vnis=lambda: [100],
        any_network=lambda: True,
    )
    enc.directory = rows  # type: ignore[assignment]
    enc.prune = True
    return enc


def run_pair(
    tmp: Path,
    seconds: int,
    ring_a: list[bytes],
    ring_b: list[bytes],
    rekey: int = 10**9,
    events: dict[int, Any] | None = None,
    gossip: GossipedRows | None = None,
) -> tuple[int, int, Encryption, Encryption, SimXfrm]:
    """A and B ping each other 50 times a second for `seconds` (fake time), syncing every
    0.5 s (A and B half a tick apart); returns (sent, lost, a, b, A's xfrm). Rows reach
    the other host at once, or as `gossip` delivers them."""
    rows, sa, sb = SharedRows(), SimXfrm(), SimXfrm()
    a = keeper(tmp, "a", A, sa, rows, ring_a, rekey)
    b = keeper(tmp, "b", B, sb, rows, ring_b, rekey)
    if gossip is not None:
        a.directory = gossip.view("a")  # type: ignore[assignment]
        b.directory = gossip.view("b")  # type: ignore[assignment]

    async def main() -> tuple[int, int]:
        await a.start()
        await b.start()
        sent = lost = 0
        t0 = 1_000_000.0
        for step in range(seconds * 50):
            now = t0 + step * 0.02
            sa.clock = sb.clock = now
            if gossip is not None:
                gossip.clock = now
            if step % 25 == 0:
                await a.sync(now)
            if step % 25 == 12:
                await b.sync(now)
            if events and step in events:
                events[step](a, b, sa, sb)
            if step < 50 * (2 + (gossip.delay if gossip else 0)):
                continue  # rows travel, both sides set up
            for src, dst, x, y in ((A, B, sa, sb), (B, A, sb, sa)):
                sent += 1
                lost += not x.send(src, dst, y)
        return sent, lost

    sent, lost = asyncio.run(main())
    return sent, lost, a, b, sa


def test_scheduled_rotation_loses_no_packet(tmp_path: Path) -> None:
    sent, lost, a, b, _ = run_pair(tmp_path, 200, [K1], [K1])  # 60 s rotation: 3 rotations
    assert sent == 2 * 50 * 198 and lost == 0
    assert a.sending[B].n == 3 and b.sending[A].n == 3


def test_rekey_long_before_the_sequence_number_wraps_loses_no_packet(tmp_path: Path) -> None:
    # a tiny limit: 100 packets per SA (50 a second): a new SA every 2-3 s
    sent, lost, a, b, sa = run_pair(tmp_path, 40, [K1], [K1], rekey=100)
    assert lost == 0
    assert a.sending[B].n >= 12 and b.sending[A].n >= 12
    # no SA sent more than the limit plus one tick of traffic; the kernel's cap is 2x
    assert 100 <= sa.most <= 100 + 25 and a.hard_packets == 2**32 - 2**16


def test_rotation_with_rows_late_and_lost_loses_no_packet(tmp_path: Path) -> None:
    """Rows take 3 s to arrive and every third write is lost: 3 scheduled rotations, none
    lost (the receiver installs ahead of what the sender last said)."""
    rows = GossipedRows(delay=3.0, lose=3)
    sent, lost, a, b, _ = run_pair(tmp_path, 200, [K1], [K1], gossip=rows)
    assert lost == 0 and a.sending[B].n == 3 and b.sending[A].n == 3
    assert sent == 2 * 50 * (200 - 5)


def test_rekeys_faster_than_rows_travel_wait_for_the_receiver(tmp_path: Path) -> None:
    """A new SA every 100 packets (2 s here) while rows take 7 s and a third of them are
    lost: more rotations than LOOKAHEAD would happen before the receiver hears of them. A
    sender moves on only within what its receiver says it holds, so nothing is lost;
    rekeys wait (an SA carries more than 100 packets, far from the kernel's cap)."""
    rows = GossipedRows(delay=7.0, lose=3)
    sent, lost, a, b, sa = run_pair(tmp_path, 60, [K1], [K1], rekey=100, gossip=rows)
    assert lost == 0, (sent, lost)
    assert a.sending[B].n >= 4 and b.sending[A].n >= 4  # still rotating, slower
    assert sa.most < a.hard_packets


def test_keyring_change_moves_to_the_new_key_without_loss(tmp_path: Path) -> None:
    ring_a, ring_b = [K1], [K1]

    def add_key(a: Encryption, b: Encryption, sa: SimXfrm, sb: SimXfrm) -> None:
        ring_a.insert(0, K2)  # as `pyoverlay keys reload`, host by host
        ring_b.insert(0, K2)

    sent, lost, a, b, _ = run_pair(tmp_path, 20, ring_a, ring_b, events={500: add_key})
    assert lost == 0 and a.sending[B].key_id == ipsec.key_id(K2)


def test_a_host_without_the_new_key_can_neither_send_nor_read(tmp_path: Path) -> None:
    """The removed host keeps the old key; the others move to a new ring without it."""
    ring_a, ring_b = [K1], [K1]

    def rotate_out(a: Encryption, b: Encryption, sa: SimXfrm, sb: SimXfrm) -> None:
        ring_a[:] = [K2]  # A gets the new ring; B (removed) does not

    sent, lost, a, b, _ = run_pair(tmp_path, 20, ring_a, ring_b, events={500: rotate_out})
    # everything arrives until A's next sync after the change (step 525), then nothing,
    # either way: A sends with a key B lacks, and no longer holds B's inbound SAs
    assert lost == 2 * (20 * 50 - 525)


def test_a_lost_outbound_sa_is_never_re_added_with_the_same_key(tmp_path: Path) -> None:
    used: set[bytes] = set()

    def drop_out(a: Encryption, b: Encryption, sa: SimXfrm, sb: SimXfrm) -> None:
        for ident in [i for i in sa.states if i[0] == A]:
            used.add(sa.states.pop(ident)[0])  # someone ran `ip xfrm state flush`

    sent, lost, a, b, sa = run_pair(tmp_path, 10, [K1], [K1], events={300: drop_out})
    assert used and a.sending[B].n == 1 and not used & {v[0] for v in sa.states.values()}
    assert lost <= 2 * 25  # until A's next sync (half a second of A->B)


@pytest.mark.parametrize("restart_kernel", [False, True])
def test_restart_keeps_numbers_or_takes_a_new_salt(tmp_path: Path, restart_kernel: bool) -> None:
    rows, sa, sb = SharedRows(), SimXfrm(), SimXfrm()
    a = keeper(tmp_path, "a", A, sa, rows, [K1])
    b = keeper(tmp_path, "b", B, sb, rows, [K1])

    async def main() -> None:
        await a.start()
        await b.start()
        for now in (1.0, 2.0, 100.0):  # the second sync at 100 s: rotated once
            await a.sync(now)
            await b.sync(now)
        if restart_kernel:
            sa.states.clear()
            sa.policies.clear()
        again = keeper(tmp_path, "a", A, sa, rows, [K1])
        await again.start()
        assert (again.salt == a.salt) is (not restart_kernel)
        assert again.sending.get(B, Sending(-1, 0, "")).n == (-1 if restart_kernel else 1)

    asyncio.run(main())


def test_the_keeper_reads_the_kernel_when_something_changed_not_every_tick(
    tmp_path: Path,
) -> None:
    """Idle, with one encrypted peer: no `ip xfrm` read at each 1 s tick (it forked `ip`
    twice a tick before); a wake-up reads at once; a fast flow brings the next read
    forward so the rekey limit is met in time."""
    rows, sa, sb = SharedRows(), SimXfrm(), SimXfrm()
    a = keeper(tmp_path, "a", A, sa, rows, [K1], rekey=10_000)
    b = keeper(tmp_path, "b", B, sb, rows, [K1])

    async def main() -> None:
        await a.start()
        await b.start()
        for _ in range(2):
            await a.sync()
            await b.sync()
        loop = asyncio.ensure_future(a.run(0.01))  # noqa: RUF006 - cancelled below
        try:
            await asyncio.sleep(0.3)  # 30 ticks, nothing changes
            idle = a.reads
            await asyncio.sleep(0.3)
            assert a.reads == idle, (idle, a.reads)
            a.wake.set()
            for _ in range(500):
                if a.reads > idle:
                    break
                await asyncio.sleep(0.01)
            assert a.reads == idle + 1
        finally:
            loop.cancel()
        # 1,000 packets a second on the outbound SA: 9,000 left of 10,000 -> read in 4.5 s
        out = [s for s in await sa.states_() if s.src == A][0]
        a._read_interval([out], 100.0)
        sent = ipsec.InstalledSa(out.src, out.dst, out.spi, out.packets + 1000, out.added)
        assert a._read_interval([sent], 101.0) == pytest.approx((10_000 - 1000) / 1000 / 2)

    asyncio.run(main())


def mesh_only_pair(
    tmp: Path, rows: SharedRows, sa: SimXfrm, sb: SimXfrm, mesh: list[bool | None]
) -> tuple[Encryption, Encryption]:
    """a: no network at all, only the mesh's encrypted hop (`mesh[0]`); b: an encrypted
    network of its own and the same hop."""
    a = keeper(tmp, "a", A, sa, rows, [K1])
    b = keeper(tmp, "b", B, sb, rows, [K1])
    a.inputs.encrypted_vnis = lambda: []  # no task of the service here
    a.inputs.any_network = lambda: False  # nor any network at all
    a.inputs.mesh = b.inputs.mesh = lambda: mesh[0]
    return a, b


def test_the_routing_mesh_alone_brings_sas_and_its_policy_to_every_peer(tmp_path: Path) -> None:
    """A node with no encrypted network of its own, in a cluster where an encrypted
    service publishes a port: it forwards that service's connections (mesh), so it needs
    SAs with the peer and the mesh's policy; none of that once the port is gone."""
    rows, sa, sb = SharedRows(), SimXfrm(), SimXfrm()
    mesh: list[bool | None] = [True]
    a, b = mesh_only_pair(tmp_path, rows, sa, sb, mesh)

    async def main() -> None:
        await a.start()
        await b.start()
        for _ in range(2):
            await a.sync(1000.0)
            await b.sync(1000.0)
        assert (A, B, ipsec.MESH_PORT) in sa.policies and (B, A, ipsec.MESH_PORT) in sb.policies
        mine = {(s.src, s.dst) for s in await sa.states_()}
        assert {(A, B), (B, A)} <= mine  # sends to b and reads b's
        assert sa.send(A, B, sb) and sb.send(B, A, sa)
        mesh[0] = False
        for _ in range(2):
            await a.sync(1001.0)
            await b.sync(1001.0)
        assert not sa.policies and not await sa.states_()  # nothing encrypted is left here
        assert (B, A, ipsec.MESH_PORT) not in sb.policies  # b keeps its network's only
        assert (B, A, 4789) in sb.policies

    asyncio.run(main())


def test_a_restart_removes_nothing_before_the_mesh_and_the_cluster_are_known(
    tmp_path: Path,
) -> None:
    """A node with no encrypted network of its own that forwards the encrypted hop, its
    plugin restarted: until the cluster is synced and the mesh has a view again, its SAs
    and mesh policies stay (the kernel's mesh table still marks the hop)."""
    rows, sa, sb = SharedRows(), SimXfrm(), SimXfrm()
    mesh: list[bool | None] = [True]
    a, b = mesh_only_pair(tmp_path, rows, sa, sb, mesh)

    async def main() -> None:
        await a.start()
        await b.start()
        for _ in range(2):
            await a.sync(1000.0)
            await b.sync(1000.0)
        before = (set(sa.policies), {s.ident for s in await sa.states_()})
        assert (A, B, ipsec.MESH_PORT) in before[0]
        # restarted: the cluster not synced yet, the mesh without a view
        again = keeper(tmp_path, "a", A, sa, rows, [K1])
        again.inputs = a.inputs
        again.prune, mesh[0] = False, None
        await again.start()
        await again.sync(1001.0)
        assert (set(sa.policies), {s.ident for s in await sa.states_()}) == before
        again.prune = True  # synced, the mesh still without a view: still kept
        await again.sync(1002.0)
        assert (A, B, ipsec.MESH_PORT) in sa.policies
        mesh[0] = True
        await again.sync(1003.0)
        assert (A, B, ipsec.MESH_PORT) in sa.policies and sa.send(A, B, sb)

    asyncio.run(main())


def test_the_plugin_wires_the_mesh_and_the_ipsec_keeper_together(tmp_path: Path) -> None:
    """plugin/wiring.secure_mesh: the keeper asks the mesh whether the hop exists, the
    mesh wakes the keeper when that changes and asks it whether ESP can be done here."""
    from support import UNDERLAY

    from pyoverlay.driver.core.model import Underlay
    from pyoverlay.driver.overlay.driver import OverlayDriver
    from pyoverlay.driver.servicelb.mesh import MeshKeeper
    from pyoverlay.plugin.wiring import secure_mesh
    from testing.fakes import FakeKernel

    ring: list[bytes] = []
    enc = keeper(tmp_path, "a", A, SimXfrm(), SharedRows(), ring)
    underlay = Underlay(UNDERLAY.address, 4789, 1500)
    driver = OverlayDriver(FakeKernel(UNDERLAY), tmp_path / "driver.json", "a", underlay)
    mesh = MeshKeeper(driver, NoTables(), None, A)  # type: ignore[arg-type]
    secure_mesh(mesh, enc)
    assert enc.inputs.mesh() is mesh.secure_hop()
    assert mesh.esp() == "no cluster key is set"
    ring.append(K1)
    assert mesh.esp() is None
    enc.unsupported = "no esp4"
    assert mesh.esp() == "this kernel cannot do ESP"
    assert not enc.wake.is_set()
    mesh.on_secure()
    assert enc.wake.is_set()
