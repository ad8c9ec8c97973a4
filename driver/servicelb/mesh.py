"""Keeps this host's routing-mesh table in line with the cluster (meshrules.py decides).

Every host publishes one row in the global `mesh` gossip scope, keyed by its
node id: its underlay address, how many tasks of each service run here
(joined endpoints the watcher bound to a service), and, on swarm managers
only (the only nodes whose dockerd lists services), each service's
ingress-mode ports.  Every host then balances every published port over its
own tasks (their docker_gwbridge addresses, read once per task from the
local dockerd) and the hosts whose rows say they run one.  So a task that
starts, stops or moves reaches every node's table within a tick of gossip
(TICK polls dockerd on managers), and a dead host's row leaves with it; a host
whose plugin is silent while the host answers keeps its last row here (a
manager's plugin restart must not take every published port off every node).

A service on an `-o encrypted` network is balanced the same way, but its hop
between nodes is ESP: the mesh marks it SECURE (meshrules.py), and the IPsec
keeper (secure/keeper.py), told by `secure_hop`, keeps SAs with every peer and
a policy that selects that mark. Where this host cannot encrypt (no cluster
key, no ESP in the kernel: `esp`), such a service is served by the tasks on
the node that receives the connection only, and `pyoverlay services` says so.

Until the plugin has synced with the cluster after a start, the table the
kernel holds stays as it is (the sync gate: it still balances every running
connection).  Every VERIFY_EVERY the kernel's table and Docker's DOCKER-USER
chain are read back and repaired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Protocol
from urllib.parse import quote

import structlog

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.core.directory import KeptRows
from pyoverlay.driver.core.interfaces import RuleTables
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.servicelb import meshdocker
from pyoverlay.driver.servicelb import meshrules as rules

log = structlog.get_logger("pyoverlay.mesh")
SCOPE = "mesh"
TICK = 1.0  # seconds between looks at dockerd (managers) and the rows
ROLE_EVERY = 30.0  # how often a node asks dockerd whether it is a manager
VERIFY_EVERY = 10.0  # kernel read-back (drift repair)
ASK_AGAIN = 2.0  # a task whose docker_gwbridge address dockerd did not list: asked again
_UNKNOWN = object()


class DockerReader(Protocol):
    async def get(self, path: str) -> Any:
        """GET a path of the local dockerd's API (None: 404)."""
        ...


class MeshKeeper:
    def __init__(
        self,
        driver: OverlayDriver,
        tables: RuleTables,
        api: DockerReader,
        address: IPv4Address,
        listeners: Callable[[], Iterable[tuple[str, str, int]]] = frozenset,
    ) -> None:
        self.driver = driver
        self.tables = tables
        self.api = api
        self.address = address
        self.manager = False
        self.next_role = 0.0
        self.ports: dict[str, tuple[rules.PublishedPort, ...]] = {}  # what this manager reads
        self.gateways: dict[str, IPv4Address] = {}  # endpoint id -> its docker_gwbridge address
        self.asked: set[str] = set()  # endpoints dockerd had no address for at the last ask
        self.ask_again = 0.0
        self.published: dict[str, Any] | None = None
        self.kept = KeptRows("addr")
        self.have: Any = _UNKNOWN  # rules.Shape | None once known
        self.mesh = rules.Mesh((), ())
        self.error = ""
        self.docker_user = "unknown"
        self.listeners = listeners  # (protocol, address, port) a process here listens on
        self.taken: tuple[str, ...] = ()  # published ports one of them also wants
        # why this host cannot put the hop between nodes in ESP (None: it can); set by
        # the plugin from the IPsec keeper
        self.esp: Callable[[], str | None] = lambda: "IPsec is off here (not clustered)"
        self.on_secure: Callable[[], None] = lambda: None  # secure_hop() changed
        self.viewed = False  # a view was made from the cluster's rows (after the sync)

    # -- what this host knows -------------------------------------------------------

    async def read_ports(self, now: float) -> None:
        if now >= self.next_role:
            info = await self.api.get("/info") or {}
            swarm = info.get("Swarm") or {}
            self.manager = bool(swarm.get("ControlAvailable"))
            self.next_role = now + ROLE_EVERY
        if not self.manager:
            self.ports = {}
            return
        ports = {}
        for svc in await self.api.get("/services") or []:
            name = str((svc.get("Spec") or {}).get("Name", ""))
            found = meshdocker.published_ports(svc)
            if name and found:
                ports[name] = found
        self.ports = ports

    def local_tasks(self) -> dict[str, list[str]]:
        """service -> endpoint ids of its tasks joined here."""
        out: dict[str, list[str]] = {}
        for ep in self.driver.endpoints.values():
            if ep.joined and ep.service:
                out.setdefault(ep.service, []).append(ep.endpoint_id)
        return out

    async def read_gateways(self) -> None:
        """The docker_gwbridge address of each local task not known yet (dockerd lists
        containers by id on both networks: our endpoint id -> container -> address)."""
        tasks = self.local_tasks()
        live = {eid for eids in tasks.values() for eid in eids}
        self.gateways = {e: a for e, a in self.gateways.items() if e in live}
        missing = live - set(self.gateways)
        now = time.monotonic()
        if not missing or (missing <= self.asked and now < self.ask_again):
            return  # a task without a docker_gwbridge leg (--internal) is asked about slowly
        self.asked, self.ask_again = set(missing), now + ASK_AGAIN
        nids = sorted({self.driver.endpoints[e].network_id for e in missing})
        bridge = await self.api.get("/networks/docker_gwbridge") or {}
        by_container: dict[str, IPv4Address] = {}
        for cid, c in (bridge.get("Containers") or {}).items():
            try:
                by_container[cid] = IPv4Interface(str(c.get("IPv4Address"))).ip
            except ValueError:
                continue
        for nid in nids:
            net = await self.api.get(f"/networks/{quote(nid, safe='')}") or {}
            for cid, c in (net.get("Containers") or {}).items():
                eid = str(c.get("EndpointID", ""))
                if eid in missing and cid in by_container:
                    self.gateways[eid] = by_container[cid]

    def encrypted_services(self) -> list[str]:
        """Services with a task here on an `-o encrypted` network."""
        out = set()
        for ep in self.driver.endpoints.values():
            net = self.driver.networks.get(ep.network_id)
            if ep.joined and ep.service and net is not None and net.encrypted:
                out.add(ep.service)
        return sorted(out)

    def row(self) -> dict[str, Any]:
        # only tasks this host can deliver to (their docker_gwbridge address is known):
        # the others would send it connections it could only refuse
        tasks = {
            s: n
            for s, eids in sorted(self.local_tasks().items())
            if (n := sum(e in self.gateways for e in eids))
        }
        row: dict[str, Any] = {"addr": str(self.address), "tasks": tasks}
        if encrypted := self.encrypted_services():
            row["encrypted"] = encrypted
        if self.esp() is None:
            row["esp"] = True  # this host sends and answers the encrypted hop in ESP
        if self.manager:
            row["ports"] = {
                s: [[p.protocol, p.published, p.target] for p in ps]
                for s, ps in sorted(self.ports.items())
            }
        return row

    def publish(self) -> None:
        row = self.row()
        if row != self.published:
            self.driver.directory.publish(SCOPE, self.driver.node_id, row)
            self.published = row

    def rows(self) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        """The `mesh` rows, and the last row of each host whose plugin is silent while the
        host still answers (its rows are gone, its kernel and tasks are not: a manager's
        plugin restart must not take every published port off every node)."""
        rows = self.kept.rows(self.driver.directory, SCOPE)
        return [(key, value, version) for key, (value, version) in sorted(rows.items())]

    def wanted(self) -> rules.Mesh:
        newest: dict[str, tuple[tuple[int, str], tuple[rules.PublishedPort, ...]]] = {}
        remote: dict[str, list[IPv4Address]] = {}
        members: list[IPv4Address] = []
        encrypted: set[str] = set()
        esp_hosts: set[IPv4Address] = set()  # hosts that do the encrypted hop in ESP
        for key, value, version in self.rows():
            try:
                addr = IPv4Address(str(value.get("addr")))
                for svc, ports in (value.get("ports") or {}).items():
                    found = tuple(rules.PublishedPort(str(p), int(q), int(t)) for p, q, t in ports)
                    if svc not in newest or newest[svc][0] < version:
                        newest[svc] = (version, found)
                encrypted.update(str(x) for x in value.get("encrypted") or [])
                if key == self.driver.node_id:
                    continue
                members.append(addr)
                if value.get("esp") is True:
                    esp_hosts.add(addr)
                for svc, n in (value.get("tasks") or {}).items():
                    if int(n) > 0:
                        remote.setdefault(str(svc), []).append(addr)
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("mesh row ignored", node=key, error=str(exc))
        local = {
            s: tuple(self.gateways[e] for e in eids if e in self.gateways)
            for s, eids in self.local_tasks().items()
        }
        # a service on an encrypted network: its hop between nodes is ESP, to the hosts
        # that say they do it (a host that cannot, or an older plugin, would answer in the
        # clear) or, where this host cannot encrypt, there is no such hop
        why = self.esp()
        for s in encrypted & set(remote):
            remote[s] = [a for a in remote[s] if why is None and a in esp_hosts]
        view = rules.MeshInput(
            ports={s: p for s, (_, p) in newest.items()},
            local=local,
            remote={s: tuple(a) for s, a in remote.items()},
            members=tuple(members),
            secure=frozenset(encrypted) if why is None else frozenset(),
            mtu=self.driver.underlay.mtu,
        )
        mesh = rules.balance(view)
        notes = [
            f"{s} is on an encrypted network and {why}: its published ports are served by "
            "the tasks on the node that receives the connection only"
            for s in sorted(encrypted & set(newest))
            if why is not None
        ]
        return replace(mesh, conflicts=mesh.conflicts + tuple(notes))

    def secure_hop(self) -> bool | None:
        """A published port of a service on an encrypted network exists (anywhere): this
        host needs SAs with every peer and the mesh's xfrm policies, to send that hop and
        to answer it. None until a view was made from the synced cluster's rows."""
        if not self.viewed:
            return None
        return any(b.secure for b in self.mesh.ports)

    # -- the kernel ------------------------------------------------------------------

    async def sync(self, verify: bool = False) -> int:
        """Make the kernel's mesh table (and the DOCKER-USER rule) match; nft commands run."""
        mesh = self.wanted()
        for conflict in set(mesh.conflicts) - set(self.mesh.conflicts):
            log.error("published port not balanced", why=conflict)
        secure = self.secure_hop()
        self.mesh = mesh
        self.viewed = self.viewed or self.driver.prune_peers
        if self.secure_hop() != secure:
            self.on_secure()
        if not self.driver.prune_peers:
            return 0  # not synced since start: the kernel's table keeps serving
        if verify or self.have is _UNKNOWN:
            self.have = rules.parse(await self.tables.list_table(None, rules.FAMILY, rules.TABLE))
        cmds = rules.plan(self.have, mesh)
        if cmds:
            self.have = _UNKNOWN  # until the transaction is through
            await self.tables.apply(None, cmds)
            live = [b for b in mesh.ports if b.targets]
            log.info("mesh programmed", ports=len(live), changes=len(cmds))
            self.have = rules.shape_of(rules.build(mesh))
        if cmds or verify:
            await self._docker_user(any(b.targets for b in mesh.ports))
            taken = rules.listener_conflicts(mesh, self.listeners())
            for why in set(taken) - set(self.taken):
                log.error("published port also wanted here", why=why)
            self.taken = taken
        return len(cmds)

    async def _docker_user(self, wanted: bool) -> None:
        family, table, _ = meshdocker.DOCKER_USER
        handles = meshdocker.docker_user_handles(await self.tables.list_table(None, family, table))
        if handles is None:
            if wanted and self.docker_user != "missing":
                log.warning(
                    "no DOCKER-USER chain in nftables (iptables-legacy, or dockerd without "
                    "iptables): forwarded mesh connections depend on FORWARD's policy"
                )
            self.docker_user = "missing"
            return
        cmds = meshdocker.docker_user_plan(handles, wanted)
        if cmds:
            await self.tables.apply(None, cmds)
        self.docker_user = "accepting" if wanted else "absent"

    async def run(self) -> None:
        next_verify = 0.0
        while True:
            now = time.monotonic()
            try:
                await self.read_ports(now)
                await self.read_gateways()
                self.publish()
                verify = now >= next_verify
                if verify:
                    next_verify = now + VERIFY_EVERY
                await self.sync(verify)
                self.error = ""
            except PyoverlayError as exc:
                if str(exc) != self.error:
                    log.error("mesh not in line", error=str(exc))
                self.error = str(exc)
            except Exception as exc:  # keep the loop alive whatever one round does
                log.error("mesh round failed", error=repr(exc))
            await asyncio.sleep(TICK)

    def view(self) -> dict[str, Any]:
        """For `pyoverlay services`: what this node balances, and why not where it does not."""
        return {
            "manager": self.manager,
            "docker_user": self.docker_user,
            "error": self.error,
            "conflicts": list(self.mesh.conflicts) + list(self.taken),
            "ports": [
                {
                    "service": b.service,
                    "port": f"{b.port.published}/{b.port.protocol}",
                    "target": b.port.target,
                    "encrypted": b.secure,
                    "local": [str(t.address) for t in b.targets if t.local],
                    "via": [str(t.address) for t in b.targets if not t.local],
                }
                for b in self.mesh.ports
            ],
        }
