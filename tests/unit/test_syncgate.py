"""The sync gates (plugin/syncgate.py): what a restarting plugin waits for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pyoverlay.plugin.syncgate import ipam_after_sync, prune_after_sync


class FakeDriver:
    def __init__(self) -> None:
        self.prune_peers = False
        self.reconciled = 0

    async def reconcile(self) -> tuple[list[Any], list[str]]:
        self.reconciled += 1
        return [], []


def gossip() -> Any:
    return SimpleNamespace(synced=asyncio.Event())


async def test_a_host_that_knows_no_other_prunes_at_once() -> None:
    driver, keeper = FakeDriver(), SimpleNamespace(prune=False, wake=asyncio.Event())
    await asyncio.wait_for(prune_after_sync(gossip(), driver, keeper, alone=True), 1)  # type: ignore[arg-type]
    assert driver.prune_peers and driver.reconciled == 1
    assert keeper.prune and keeper.wake.is_set()


async def test_pruning_waits_for_a_live_host_however_long_no_grace() -> None:
    """A whole fleet restarting together: every table is empty until one host answers;
    pruning before that (a 10 s grace used to allow it) cut every container off."""
    g, driver = gossip(), FakeDriver()
    gate = asyncio.ensure_future(prune_after_sync(g, driver, None, alone=False))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert not gate.done() and not driver.prune_peers  # still waiting (and it would, for 10 s)
    g.synced.set()
    await asyncio.wait_for(gate, 1)
    assert driver.prune_peers and driver.reconciled == 1


async def test_ipam_claims_wait_for_a_real_sync_unless_this_host_is_the_only_voter() -> None:
    alone = SimpleNamespace(
        synced=False, me="a", ownership=SimpleNamespace(voters={"a"}), voters=lambda: ["a"]
    )
    await asyncio.wait_for(ipam_after_sync(gossip(), alone, alone=True), 1)  # type: ignore[arg-type]
    assert alone.synced
    others = SimpleNamespace(
        synced=False, me="a", ownership=SimpleNamespace(voters={"a", "b"}), voters=lambda: []
    )
    g = gossip()
    gate = asyncio.ensure_future(ipam_after_sync(g, others, alone=True))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert not others.synced  # a voter from before the restart: never a majority of one
    g.synced.set()
    await asyncio.wait_for(gate, 1)
    assert others.synced
