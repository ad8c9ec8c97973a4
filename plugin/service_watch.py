"""Which swarm service and VIP each local task has, learned from the local dockerd.

Docker never tells a network plugin about services (only DriverOpts reach
it), but the local dockerd's `network inspect --verbose` lists every
service's VIP and tasks by endpoint ID.  After each Join on a swarm network
the endpoint is "pending": a background task asks dockerd (never inside a
plugin request) until the endpoint shows up as a task (then the driver
publishes service + VIP in the endpoint's gossip row and every host balances
the VIP over it) or PATIENCE runs out (a plain container on an attachable
network, or a dnsrr task).  Removal needs no Docker event: the row goes with
the endpoint (Leave/DeleteEndpoint), or with its host when gossip declares
it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from pyoverlay.driver import vips
from pyoverlay.driver.service import OverlayDriver
from pyoverlay.state.errors import PyoverlayError
from pyoverlay.state.tasks import TaskSet

from .docker_api import DockerApi

log = structlog.get_logger("pyoverlay.services")
PATIENCE = 60.0  # seconds to wait for dockerd to list a joined endpoint as a service task
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


class ServiceWatcher:
    def __init__(self, driver: OverlayDriver, api: DockerApi) -> None:
        self.driver = driver
        self.api = api
        self.pending: dict[str, tuple[str, float]] = {}  # eid -> (nid, give up at)
        self.wake = asyncio.Event()
        self.errors = 0

    def want(self, nid: str, eid: str) -> None:
        net = self.driver.networks.get(nid)
        if net is None or not net.swarm:
            return
        self.pending[eid] = (nid, time.monotonic() + PATIENCE)
        self.wake.set()

    def want_unbound(self) -> None:
        """After a restart: joined swarm endpoints whose service is not known yet."""
        for ep in self.driver.endpoints.values():
            if ep.joined and not ep.vip:
                self.want(ep.network_id, ep.endpoint_id)

    async def poll_once(self) -> None:
        now = time.monotonic()
        for nid in sorted({n for n, _ in self.pending.values()}):
            try:
                found = vips.bindings(await self.api.network(nid))
            except PyoverlayError as exc:
                self.errors += 1
                log.warning("dockerd not readable; VIPs wait", nid=nid[:12], error=str(exc))
                continue
            for eid, (n, give_up) in list(self.pending.items()):
                if n != nid:
                    continue
                ep = self.driver.endpoints.get(eid)
                if ep is None or not ep.joined:
                    self.pending.pop(eid, None)
                elif eid in found:
                    self.pending.pop(eid, None)
                    await self.driver.bind_service(nid, eid, *found[eid])
                elif now > give_up:
                    self.pending.pop(eid, None)
                    log.debug("not a VIP service task", nid=nid[:12], eid=eid[:12])

    async def run(self) -> None:
        delay = FIRST_DELAY
        while True:
            if not self.pending:
                await self.wake.wait()
            if self.wake.is_set():
                self.wake.clear()
                delay = FIRST_DELAY
            try:
                await self.poll_once()
            except Exception as exc:  # keep the loop alive whatever one poll does
                log.error("service poll failed", error=repr(exc))
            if self.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                delay = min(delay * 2, MAX_DELAY)

    def start(self, tasks: TaskSet) -> None:
        self.want_unbound()
        tasks.spawn("service-watch", self.run())
