"""Service VIPs: gossip rows -> wanted services -> nft plan, checked on an nft model.

The property: whatever a namespace's table holds (nothing, an older wanted
state, or drift made by hand), one plan applied as one transaction leaves
exactly the wanted services, and planning again gives nothing to do.  The
model (FakeTables) is checked against the real kernel in
tests/kernel/test_vips_nft.py with the same random sequences.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.driver.overlay import peers
from pyoverlay.driver.servicelb import ruleset as vips
from testing.fakes import FakeTables

NS = Path("/run/test/ns1")


def ip(i: int) -> IPv4Address:
    return IPv4Address("10.0.0.0") + i


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def programmed(t: FakeTables) -> vips.Programmed | None:
    return vips.parse(await t.list_table(NS, vips.FAMILY, vips.TABLE))


async def converge(t: FakeTables, want: vips.Vips) -> list[dict[str, Any]]:
    cmds = vips.plan(await programmed(t), want)
    await t.apply(NS, cmds)
    return cmds


def test_rows_become_services_by_vip() -> None:
    rows = [
        ("e1", peers.row_value(ip(5), "m1", ip(200), "web", "10.0.0.2"), (1, "a")),
        ("e2", peers.row_value(ip(6), "m2", ip(201), "web", "10.0.0.2"), (2, "b")),
        ("e3", peers.row_value(ip(7), "m3", ip(201)), (3, "b")),  # not a VIP task
        ("e4", {"ip": "10.0.0.9", "vip": "not-an-ip", "service": "x"}, (1, "c")),
    ]
    got = vips.services(vips.backends_of(rows))
    assert got == {ip(2): vips.Service("web", (ip(5), ip(6)))}


def test_plan_builds_the_kube_proxy_shaped_table_once() -> None:
    t = FakeTables()
    want = {ip(2): vips.Service("web", (ip(5), ip(6))), ip(3): vips.Service("kv", (ip(7),))}
    cmds = run(converge(t, want))
    assert cmds[0] == {"add": {"table": {"family": "ip", "name": "pyoverlay"}}}
    got = run(programmed(t))
    assert got == vips.Programmed(True, want)
    assert run(converge(t, want)) == []  # nothing to do the second time


def test_one_backend_change_touches_only_that_service() -> None:
    t = FakeTables()
    want = {ip(i): vips.Service(f"s{i}", (ip(100 + i), ip(150 + i))) for i in range(2, 52)}
    run(converge(t, want))
    want[ip(7)] = vips.Service("s7", (ip(107),))
    cmds = run(converge(t, want))
    assert [next(iter(c)) for c in cmds] == ["flush", "add"]
    assert all("svc-10.0.0.7" in str(c) for c in cmds)


def test_no_services_means_no_table() -> None:
    t = FakeTables()
    run(converge(t, {ip(2): vips.Service("web", (ip(5),))}))
    run(converge(t, {ip(2): vips.Service("web", ())}))  # scaled to 0
    assert run(programmed(t)) is None
    assert run(converge(t, {})) == []


def test_drift_by_hand_is_seen_and_repaired() -> None:
    t = FakeTables()
    want = {ip(2): vips.Service("web", (ip(5), ip(6))), ip(3): vips.Service("kv", (ip(7),))}
    run(converge(t, want))
    table = t.tables[str(NS)][("ip", "pyoverlay")]
    table["maps"]["vips"]["elem"].pop(0)  # `nft delete element ...` by hand
    got = run(programmed(t))
    assert got is not None and not got.intact
    run(converge(t, want))
    assert run(programmed(t)) == vips.Programmed(True, want)
    table = t.tables[str(NS)][("ip", "pyoverlay")]
    table["chains"]["svc-10.0.0.3"]["rules"][0]["expr"][0]["dnat"]["addr"] = "10.0.0.99"
    run(converge(t, want))
    assert run(programmed(t)) == vips.Programmed(True, want)


services_st = st.dictionaries(
    st.integers(2, 9).map(ip),
    st.builds(
        vips.Service,
        st.sampled_from(["web", "kv", "front"]),
        st.frozensets(st.integers(10, 30).map(ip), max_size=4).map(lambda s: tuple(sorted(s))),
    ),
    max_size=5,
)


def drift(t: FakeTables, how: int) -> None:
    table = t.tables.get(str(NS), {}).get(("ip", "pyoverlay"))
    if table is None:
        return
    if how == 1 and table["maps"]["vips"].get("elem"):
        table["maps"]["vips"]["elem"].pop()
        if not table["maps"]["vips"]["elem"]:
            table["maps"]["vips"].pop("elem")
    elif how == 2:
        table["chains"]["output"]["rules"].clear()
    elif how == 3:
        table["chains"]["svc-10.0.0.200"] = {"spec": {}, "rules": []}
    elif how == 4:
        for chain in table["chains"].values():
            if chain["rules"] and "comment" in chain["rules"][0]:
                chain["rules"].append(chain["rules"][0])
                break


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(services_st, st.integers(0, 4)), min_size=1, max_size=6))
def test_any_history_converges_in_one_transaction(steps: list[tuple[vips.Vips, int]]) -> None:
    t = FakeTables()
    for want, how in steps:
        drift(t, how)
        run(converge(t, want))
        live = {v: s for v, s in want.items() if s.backends}
        got = run(programmed(t))
        assert (got is None) if not live else (got == vips.Programmed(True, live))
        assert run(converge(t, want)) == []


# -- the driver: Join/Leave/bind_service keep every local container's rules right --


def make_driver(tmp: Path) -> tuple[Any, FakeTables]:
    from support import UNDERLAY

    from pyoverlay.driver.core.model import Underlay
    from pyoverlay.driver.overlay.driver import OverlayDriver
    from pyoverlay.driver.servicelb.programmer import VipProgrammer
    from testing.fakes import FakeKernel

    tables = FakeTables()
    d = OverlayDriver(
        FakeKernel(UNDERLAY), tmp / "driver.json", "node1", Underlay(UNDERLAY.address, 4789, 1500)
    )
    d.services = VipProgrammer(d, tables, tmp / "netns")
    d.load()
    return d, tables


def test_driver_serves_a_vip_to_every_local_container_and_follows_leave(tmp_path: Path) -> None:
    from pyoverlay.driver.core.options import PoolData

    (tmp_path / "netns").mkdir()
    d, tables = make_driver(tmp_path)
    gen = {"vni": "300"}

    async def scenario() -> None:
        await d.create_network(
            "n1", gen, [PoolData("10.0.0.0/24", "10.0.0.1/24")], [], False, False
        )
        boxes = {}
        for i, eid in enumerate(["e1", "e2", "e3"], start=5):
            await d.create_endpoint("n1", eid, f"10.0.0.{i}/24", "", "")
            boxes[eid] = tmp_path / "netns" / f"sb-{eid}"
            boxes[eid].touch()
            await d.join("n1", eid, f"/elsewhere/{boxes[eid].name}")  # found by name
        assert tables.tables == {}  # no service yet: no table anywhere
        assert await d.bind_service("n1", "e1", "web", "10.0.0.2")
        assert await d.bind_service("n1", "e2", "web", "10.0.0.2")
        assert not await d.bind_service("n1", "e2", "web", "10.0.0.2")  # nothing new
        web = vips.Service("web", (ip(5), ip(6)))
        for eid in boxes:
            got = vips.parse(await tables.list_table(boxes[eid], "ip", "pyoverlay"))
            assert got == vips.Programmed(True, {ip(2): web}), eid
        # a task leaves: gone from every container's rules at once, and its own table goes;
        # event-driven updates apply against what was last programmed (no read-back);
        # UDP flows the rules had sent to it are forgotten (conntrack would keep them)
        tables.flows[str(boxes["e3"])] = [(ip(2), ip(5)), (ip(2), ip(6)), (ip(7), ip(5))]
        reads = tables.reads
        await d.leave("n1", "e1")
        assert tables.reads == reads
        assert tables.flows[str(boxes["e3"])] == [(ip(2), ip(6)), (ip(7), ip(5))]
        got = vips.parse(await tables.list_table(boxes["e3"], "ip", "pyoverlay"))
        assert got == vips.Programmed(True, {ip(2): vips.Service("web", (ip(6),))})
        assert await tables.list_table(boxes["e1"], "ip", "pyoverlay") is None
        # drift by hand is repaired by the reconciler; a restart keeps the binding
        tables.tables[str(boxes["e3"])].clear()
        await d.reconcile()
        assert vips.parse(await tables.list_table(boxes["e3"], "ip", "pyoverlay")) == got
        d2, _ = make_driver(tmp_path)
        assert d2.endpoints["e2"].vip == "10.0.0.2" and d2.endpoints["e2"].service == "web"

    asyncio.run(scenario())


def test_before_gossip_has_synced_rules_are_only_added(tmp_path: Path) -> None:
    """The sync gate: a restarted plugin's table is empty; the rules running containers
    use must stay until the first sync, as FDB/ARP entries do."""
    from pyoverlay.driver.core.options import PoolData

    (tmp_path / "netns").mkdir()
    d, tables = make_driver(tmp_path)

    async def scenario() -> None:
        await d.create_network("n1", {"vni": "300"}, [PoolData("10.0.0.0/24")], [], False, False)
        await d.create_endpoint("n1", "e1", "10.0.0.5/24", "", "")
        (tmp_path / "netns" / "sb1").touch()
        await d.join("n1", "e1", str(tmp_path / "netns" / "sb1"))
        d.directory.publish(
            "peer/300", "r1", peers.row_value(ip(9), "m", ip(200), "kv", "10.0.0.3")
        )
        await d.services.sync_vips()
        kv = {ip(3): vips.Service("kv", (ip(9),))}
        sb = tmp_path / "netns" / "sb1"
        assert vips.parse(await tables.list_table(sb, "ip", "pyoverlay")) == vips.Programmed(
            True, kv
        )
        d.directory.withdraw("peer/300", "r1")  # as after a restart: the row is not known yet
        d.prune_peers = False
        await d.reconcile()
        assert vips.parse(await tables.list_table(sb, "ip", "pyoverlay")) == vips.Programmed(
            True, kv
        )
        d.prune_peers = True  # synced: now the row is really gone
        await d.reconcile()
        assert await tables.list_table(sb, "ip", "pyoverlay") is None

    asyncio.run(scenario())


def test_a_task_dockerd_lists_only_after_the_quick_polls_still_gets_its_vip(
    tmp_path: Path, monkeypatch
) -> None:
    """After PATIENCE the watcher does not give up on a joined endpoint: it asks dockerd
    every SLOW_INTERVAL, so a task listed late is bound (its VIP then balanced to it)."""
    from pyoverlay.driver.core.options import PoolData
    from pyoverlay.driver.servicelb import watcher as service_watch

    monkeypatch.setattr(service_watch, "PATIENCE", 0.1)
    monkeypatch.setattr(service_watch, "SLOW_INTERVAL", 0.3)
    (tmp_path / "netns").mkdir()
    d, _ = make_driver(tmp_path)
    d.clustered = True  # a swarm network needs gossip (the directory stays local here)

    class LateDocker:
        listed = False
        calls = 0

        async def network(self, nid: str):
            self.calls += 1
            tasks = [{"EndpointID": "e1"}] if self.listed else []
            return {"Services": {"web": {"VIP": "10.0.0.2", "Tasks": tasks}}}

    api = LateDocker()
    watcher = service_watch.ServiceWatcher(d, api)  # type: ignore[arg-type]

    async def scenario() -> None:
        await d.create_network(
            "n1", {"pyoverlay.vni": "300"}, [PoolData("10.0.0.0/24")], [], False, False
        )
        await d.create_endpoint("n1", "e1", "10.0.0.5/24", "", "")
        (tmp_path / "netns" / "sb1").touch()
        await d.join("n1", "e1", str(tmp_path / "netns" / "sb1"))
        watcher.want("n1", "e1")
        task = asyncio.ensure_future(watcher.run())  # noqa: RUF006 - cancelled below
        try:
            await asyncio.sleep(0.5)  # past PATIENCE: polled slowly now
            assert "e1" in watcher.slow and not d.endpoints["e1"].vip
            quick = api.calls
            await asyncio.sleep(0.4)
            assert api.calls - quick <= 2  # slow: not every MAX_DELAY
            api.listed = True
            for _ in range(20):
                await asyncio.sleep(0.1)
                if d.endpoints["e1"].vip:
                    break
            assert d.endpoints["e1"].vip == "10.0.0.2" and not watcher.slow
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_silent_host_that_answers_keeps_its_tasks_in_every_vip(tmp_path: Path) -> None:
    """Its plugin down past failure detection: gossip hides its rows, but its tasks still
    serve (its FDB/ARP entries stay): they stay behind the VIP until the host is gone."""
    from pyoverlay.driver.overlay import peers

    d, _ = make_driver(tmp_path)
    prog = d.services
    scope = peers.scope(300)
    row = peers.row_value(ip(9), "02:42:0a:00:00:09", IPv4Address("192.168.1.2"), "web", "10.0.0.2")
    d.directory.put(scope, "e9", row, (1, "node2"))
    assert prog.vips_of(300)[ip(2)].backends == (ip(9),)
    d.directory.withdraw(scope, "e9")  # node2 declared dead: its rows go
    kept = {"192.168.1.2"}
    d.directory.kept_vteps = lambda: frozenset(kept)  # but its host answers
    assert prog.vips_of(300)[ip(2)].backends == (ip(9),)
    kept.clear()  # the host itself is gone
    assert ip(2) not in prog.vips_of(300)


def test_kept_rows_are_forgotten_with_their_network() -> None:
    """Rows are remembered for a silent host only while it answers, and a scope with no
    rows left (a deleted network) is not remembered at all."""
    from pyoverlay.driver.core.directory import KeptRows, LocalDirectory

    d = LocalDirectory()
    kept: set[str] = set()
    d.kept_vteps = lambda: frozenset(kept)  # type: ignore[method-assign]
    rows = KeptRows("vtep")
    d.put("peer/1", "e1", {"vtep": "192.168.1.2"}, (1, "n2"))
    d.put("peer/2", "e2", {"vtep": "192.168.1.3"}, (1, "n3"))
    assert set(rows.rows(d, "peer/1")) == {"e1"} and set(rows.rows(d, "peer/2")) == {"e2"}
    kept.add("192.168.1.2")
    d.withdraw("peer/1", "e1")
    d.withdraw("peer/2", "e2")
    assert set(rows.rows(d, "peer/1")) == {"e1"}  # its host answers
    assert rows.rows(d, "peer/2") == {} and "peer/2" not in rows.last  # gone with its network
    kept.clear()
    assert rows.rows(d, "peer/1") == {} and rows.last == {}


def test_vips_read_the_directory_the_driver_has_now(tmp_path: Path) -> None:
    """The plugin gives the driver its gossip directory after making it: VIPs (and the
    mesh) must read that one, not the single-host stand-in they were built with (a bug:
    every mesh test on two nodes failed, each node saw only its own rows)."""
    from pyoverlay.driver.core.directory import LocalDirectory
    from pyoverlay.driver.overlay import peers

    d, _ = make_driver(tmp_path)
    prog = d.services
    gossip = LocalDirectory("node1")
    d.directory = gossip
    row = peers.row_value(ip(9), "02:42:0a:00:00:09", IPv4Address("192.168.1.2"), "web", "10.0.0.2")
    gossip.put(peers.scope(300), "e9", row, (1, "node2"))
    assert prog.vips_of(300)[ip(2)].backends == (ip(9),)
