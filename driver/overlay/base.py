"""The overlay driver's state: networks and endpoints (driver.json), the locks, lookups.

Concurrency: one asyncio.Lock per network (`_lock(nid)`); the state document
is written while that lock is held, and writes are synchronous (no await
between mutating the in-memory maps and saving), so two calls can never
interleave half-way.  CreateNetwork/DeleteNetwork also hold the structure
lock, and the reconciler holds the structure lock and then every network
lock (in sorted order) while it plans and repairs links, so it can never
see a half-made network as an orphan nor race a Docker call.  Lock order:
structure lock, then network locks in sorted order; Docker calls hold at
most one network lock.

Failure rule: a call that fails leaves nothing behind.  Ops are applied in
order; on the first error every op that created something is undone in
reverse, then the error is raised with "; rolled back".  State is saved only
after the kernel work succeeded; if saving fails the kernel work is undone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from pyoverlay.core.errors import NotFound, PyoverlayError
from pyoverlay.core.store import JsonDocument
from pyoverlay.driver.core.directory import LocalDirectory, PeerDirectory
from pyoverlay.driver.core.interfaces import (
    Kernel,
    NetworkGuard,
    NoServiceRules,
    PeerEntries,
    ServiceRules,
)
from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec, Underlay
from pyoverlay.driver.core.ops import Op, undo
from pyoverlay.driver.overlay import peers

log = structlog.get_logger("pyoverlay.driver")


async def apply_all(kernel: Kernel, ops: Sequence[Op]) -> None:
    """Apply ops in order; on failure undo what was created, in reverse, and re-raise."""
    done: list[Op] = []
    for op in ops:
        try:
            if await kernel.apply(op):
                done.append(op)
        except PyoverlayError as exc:
            failed = await rollback(kernel, done)
            suffix = "; rolled back" if not failed else f"; roll-back failed: {failed}"
            raise PyoverlayError(f"{exc}{suffix}") from exc


async def rollback(kernel: Kernel, done: Sequence[Op]) -> str:
    problems = []
    for op in reversed(done):
        for inverse in undo(op):
            try:
                await kernel.apply(inverse)
            except PyoverlayError as exc:
                problems.append(str(exc))
    return "; ".join(problems)


# how long the first endpoint of a network on this host waits for the network's rows
FETCH_TIMEOUT = 2.0


def short(id_: str) -> str:
    return id_[:12]


class DriverBase:
    def __init__(
        self,
        kernel: Kernel,
        state_file: Path,
        node_id: str,
        underlay: Underlay,
        directory: PeerDirectory | None = None,
    ) -> None:
        self.kernel = kernel
        # called after every successful Join (the service watcher asks dockerd about it)
        self.on_join: Callable[[str, str], None] = lambda nid, eid: None
        self.directory: PeerDirectory = directory or LocalDirectory(node_id)
        self.doc = JsonDocument(state_file)
        self.node_id = node_id
        self.underlay = underlay
        self.networks: dict[str, NetworkSpec] = {}
        self.endpoints: dict[str, EndpointSpec] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._structure = asyncio.Lock()  # networks appear/disappear; the reconciler
        self._wanted: dict[int, tuple[int, PeerEntries]] = {}  # vni -> (generation, entries)
        self._parsed: dict[int, dict[tuple[str, tuple[int, str]], peers.RemoteEndpoint | None]] = {}
        self.clustered = False  # gossip runs: networks must have an identity all hosts share
        # False until the cluster's table has been synced once: until then peer
        # programming only adds and fixes entries, it never removes one (and then, per
        # network, not before that network's rows came: directory.rows_complete).
        self.prune_peers = True
        # False (default): a network's namespace, br0 and VTEP exist only while it has a
        # local endpoint, and only then does this host receive its endpoint rows
        self.eager = False
        # IPsec for `-o encrypted` and the VXLAN guard table (secure/keeper.py; None:
        # single host, no key)
        self.encryption: NetworkGuard | None = None
        # service VIP rules in container namespaces (servicelb/programmer.py)
        self.services: ServiceRules = NoServiceRules()

    def load(self) -> None:
        d = self.doc.load()
        self.networks = {k: NetworkSpec.from_json(v) for k, v in (d.get("networks") or {}).items()}
        self.endpoints = {
            k: EndpointSpec.from_json(v) for k, v in (d.get("endpoints") or {}).items()
        }

    def save(self) -> None:
        self.doc.save(
            {
                "networks": {k: v.to_json() for k, v in self.networks.items()},
                "endpoints": {k: v.to_json() for k, v in self.endpoints.items()},
            }
        )

    def active(self, nid: str) -> bool:
        """Whether network `nid` has its sandbox (namespace, br0, VTEP) on this host: while
        it has a local endpoint (as Docker's overlay does), or always with `eager`."""
        return nid in self.networks and (
            self.eager or any(e.network_id == nid for e in self.endpoints.values())
        )

    def active_networks(self) -> list[NetworkSpec]:
        return [n for nid, n in self.networks.items() if self.active(nid)]

    def _lock(self, nid: str) -> asyncio.Lock:
        return self._locks.setdefault(nid, asyncio.Lock())

    def network(self, nid: str) -> NetworkSpec:
        net = self.networks.get(nid)
        if net is None:
            raise NotFound(
                f"network {short(nid)} is not known to pyoverlay on this host; "
                "if its state was lost, remove and re-create the network"
            )
        return net

    def endpoint(self, nid: str, eid: str) -> EndpointSpec:
        ep = self.endpoints.get(eid)
        if ep is None or ep.network_id != nid:
            raise NotFound(
                f"endpoint {short(eid)} is not known to pyoverlay on network {short(nid)}"
            )
        return ep
