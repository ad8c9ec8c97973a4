"""Which swarm service and VIP each local task has, learned from the local dockerd.

Docker never tells a network plugin about services (only DriverOpts reach
it), but the local dockerd's `network inspect --verbose` lists every
service's VIP and tasks by endpoint ID.  After each Join on a swarm network
the endpoint is "pending": a background task asks dockerd (never inside a
plugin request) until the endpoint shows up as a task (then the driver
publishes service + VIP in the endpoint's gossip row and every host balances
the VIP over it). After PATIENCE (a plain container on an attachable network,
a dnsrr task, or a task dockerd lists late) it is asked about only every
SLOW_INTERVAL, for as long as the endpoint is joined.  Removal needs no
Docker event: the row goes with the endpoint (Leave/DeleteEndpoint), or with
its host when gossip declares it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import structlog

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.tasks import TaskSet
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.servicelb import ruleset as vips

log = structlog.get_logger("pyoverlay.services")
PATIENCE = 60.0  # seconds of quick polls for dockerd to list a joined endpoint as a task
FIRST_DELAY = 0.05
MAX_DELAY = 2.0
SLOW_INTERVAL = 30.0  # then: one poll of its network this often


class DockerNetworks(Protocol):
    """The local dockerd, read only (plugin/docker_api.py)."""

    async def network(self, nid: str) -> dict[str, Any] | None:
        """`docker network inspect --verbose`: services with their VIP and tasks."""
        ...


class ServiceWatcher:
    def __init__(self, driver: OverlayDriver, api: DockerNetworks) -> None:
        self.driver = driver
        self.api = api
        self.pending: dict[str, tuple[str, float]] = {}  # eid -> (nid, slow down at)
        self.slow: dict[str, str] = {}  # eid -> nid: past PATIENCE, polled every SLOW_INTERVAL
        self.next_slow = 0.0
        self.wake = asyncio.Event()
        self.errors = 0

    def want(self, nid: str, eid: str) -> None:
        net = self.driver.networks.get(nid)
        if net is None or not net.swarm:
            return
        self.slow.pop(eid, None)
        self.pending[eid] = (nid, time.monotonic() + PATIENCE)
        self.wake.set()

    def want_unbound(self) -> None:
        """After a restart: joined swarm endpoints whose service is not known yet."""
        for ep in self.driver.endpoints.values():
            if ep.joined and not ep.vip:
                self.want(ep.network_id, ep.endpoint_id)

    async def poll_once(self) -> None:
        now = time.monotonic()
        watched = {eid: nid for eid, (nid, _) in self.pending.items()}
        if now >= self.next_slow:
            self.next_slow = now + SLOW_INTERVAL
            watched |= self.slow
        for nid in sorted(set(watched.values())):
            try:
                found = vips.bindings(await self.api.network(nid))
            except PyoverlayError as exc:
                self.errors += 1
                log.warning("dockerd not readable; VIPs wait", nid=nid[:12], error=str(exc))
                continue
            for eid in [e for e, n in watched.items() if n == nid]:
                ep = self.driver.endpoints.get(eid)
                if ep is None or not ep.joined or eid in found:
                    self.pending.pop(eid, None)
                    self.slow.pop(eid, None)
                    if ep is not None and ep.joined:
                        await self.driver.bind_service(nid, eid, *found[eid])
                elif eid in self.pending and now > self.pending[eid][1]:
                    del self.pending[eid]
                    self.slow[eid] = nid  # a plain container, a dnsrr task, or a late one
                    log.debug("not a VIP service task yet", nid=nid[:12], eid=eid[:12])

    async def run(self) -> None:
        delay = FIRST_DELAY
        while True:
            if not self.pending:
                with contextlib.suppress(TimeoutError):
                    wait = None if not self.slow else self.next_slow - time.monotonic()
                    await asyncio.wait_for(self.wake.wait(), wait)
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
