"""The plugin's background work: peer syncs on table changes, and the periodic reconciler.

Gossip callbacks must not block, so they only mark VNIs dirty; one task
drains the dirty set and programs FDB/ARP entries.  Another task runs the
full reconcile (links, then peers) every --reconcile-interval seconds, which
repairs drift no event reported (an entry deleted by hand, a lost event).
"""

from __future__ import annotations

import asyncio

import structlog

from pyoverlay.core.metrics import METRICS
from pyoverlay.core.tasks import TaskSet
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.overlay.identity import NET_TABLE
from pyoverlay.driver.overlay.peers import PEER_TABLE
from pyoverlay.driver.secure.keeper import Encryption
from pyoverlay.driver.secure.sa import ROW_SCOPE
from pyoverlay.driver.servicelb.programmer import VipProgrammer

log = structlog.get_logger("pyoverlay.background")


class PeerSyncer:
    def __init__(
        self, driver: OverlayDriver, interval: float, vips: VipProgrammer | None = None
    ) -> None:
        self.driver = driver
        self.interval = interval
        self.vips = vips  # service VIP rules follow the same rows (swarm scope)
        self.keeper: Encryption | None = None  # IPsec rows wake it
        self.dirty: set[int] = set()
        self.check_specs = False
        self.everything = False  # every network: the set of kept VTEPs changed
        self.wake = asyncio.Event()

    def on_rows(self, scopes: set[str]) -> None:
        """Gossip callback (must not block): remember which VNIs changed."""
        for scope in scopes:
            table, _, vni = scope.partition("/")
            if table == PEER_TABLE and vni.isdigit():
                self.dirty.add(int(vni))
            if table == NET_TABLE:
                self.check_specs = True
            if table == ROW_SCOPE and self.keeper is not None:
                self.keeper.wake.set()  # a peer's IPsec SA numbers moved
        if self.dirty or self.check_specs:
            self.wake.set()

    def on_kept(self) -> None:
        """Gossip callback: a silent host's kernel started or stopped answering, so the
        entries towards its VTEP are kept or go, on every network."""
        self.everything = True
        self.wake.set()

    async def run_events(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            vnis, self.dirty = self.dirty, set()
            if self.everything:
                self.everything = False
                vnis |= {net.vni for net in self.driver.networks.values()}
            if self.check_specs:
                self.check_specs = False
                for nid, hosts in self.driver.disagreements().items():
                    for host, diffs in hosts.items():
                        log.warning(
                            "hosts disagree on a network", nid=nid[:12], node=host, diff=diffs
                        )
            for vni in sorted(vnis):
                try:
                    await self.driver.sync_peers(vni)
                    if self.vips is not None:
                        await self.vips.sync_vips(vni)
                except Exception as exc:  # keep the loop alive whatever one sync does
                    log.error("peer sync failed", vni=vni, error=repr(exc))

    async def run_periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                ops, errors = await self.driver.reconcile()
            except Exception as exc:
                log.error("reconcile failed", error=repr(exc))
                continue
            if ops:
                METRICS.inc("pyoverlay_reconciler_repairs_total", by=len(ops))
                log.warning("reconciler repaired drift", changes=len(ops), errors=len(errors))

    def start(self, tasks: TaskSet) -> None:
        tasks.spawn("peer-sync", self.run_events())
        tasks.spawn("reconciler", self.run_periodic())
