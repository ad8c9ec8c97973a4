"""The sync gates: what a (re)starting plugin may do only once its table is the cluster's.

* Pruning (`prune_after_sync`): after a restart the table is empty while the
  kernel holds the entries running containers use, so nothing is removed
  until a first full exchange with a live host, however long that takes (a
  host that knows no other prunes at once): when a whole fleet restarts, every
  table is empty until one answers. Then each network waits for its own rows
  (`directory.rows_complete`), and entries towards a host whose plugin is
  silent but whose kernel answers are kept (cluster/hostcheck.py).
* IPAM claims (`ipam_after_sync`): a host that cannot reach the cluster must
  never count itself as a majority of one: no grace period.
"""

from __future__ import annotations

import structlog

from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.secure.keeper import Encryption
from pyoverlay.ipam.cluster import ClusterGuard

log = structlog.get_logger("pyoverlay.server")


async def prune_after_sync(
    gossip: GossipRuntime, driver: OverlayDriver, keeper: Encryption | None, alone: bool
) -> None:
    if not alone:
        if not gossip.synced.is_set():
            log.info("peer entries kept until a pyoverlay host answers")
        await gossip.synced.wait()
    driver.prune_peers = True
    if keeper is not None:
        keeper.prune = True
        keeper.wake.set()
    ops, errors = await driver.reconcile()
    log.info("synced reconcile", changes=len(ops), errors=len(errors))


async def ipam_after_sync(gossip: GossipRuntime, guard: ClusterGuard, alone: bool) -> None:
    if not alone or guard.ownership.voters - {guard.me}:
        await gossip.synced.wait()
    guard.synced = True
    log.info("ipam may claim blocks", voters=len(guard.voters()))
