"""OverlayDriver: Docker's NetworkDriver calls, decided by plan.py and peers.py, done by a
Kernel. One concept per module, each a layer of the class:

    base.py       state (driver.json), locks, lookups, apply with roll-back
    peersync.py   table rows -> FDB/ARP entries; our own rows; identity checks
    networks.py   CreateNetwork/DeleteNetwork and the lazy sandbox
    endpoints.py  CreateEndpoint/DeleteEndpoint, Join/Leave, service binding
    driver.py     the reconciler, and the class Docker's handlers call
"""

from __future__ import annotations

import contextlib

import structlog

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.core.ops import Op
from pyoverlay.driver.overlay import plan
from pyoverlay.driver.overlay.endpoints import Endpoints

log = structlog.get_logger("pyoverlay.driver")


class OverlayDriver(Endpoints):
    async def plan_reconcile(self) -> list[Op]:
        snap = await self.kernel.snapshot()
        return plan.reconcile(
            snap, self.node_id, self.underlay, self.active_networks(), self.endpoints.values()
        )

    async def reconcile(self, dry_run: bool = False) -> tuple[list[Op], list[str]]:
        """Make the kernel match the state and the table; returns (ops, errors).

        Links first, then every network's FDB/ARP entries.  Never raises for one op.
        """
        errors: list[str] = []
        async with self._structure, contextlib.AsyncExitStack() as stack:
            for nid in sorted(self.networks):
                await stack.enter_async_context(self._lock(nid))
            ops = await self.plan_reconcile()
            if dry_run:
                for net in self.active_networks():
                    ops += await self.plan_peers(net)
                return ops, errors
            for op in ops:
                try:
                    await self.kernel.apply(op)
                    log.info("reconciled", op=str(op))
                except PyoverlayError as exc:
                    errors.append(str(exc))
                    log.error("reconcile op failed", op=str(op), error=str(exc))
        ops += await self.sync_peers()
        await self.services.sync_vips(verify=True)
        return ops, errors
