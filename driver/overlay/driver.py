"""OverlayDriver: Docker's NetworkDriver calls, decided by plan.py, done by a Kernel.

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
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import structlog

from pyoverlay.core.errors import Conflict, InvalidOption, NotFound, PyoverlayError
from pyoverlay.core.store import JsonDocument
from pyoverlay.driver.core.directory import LocalDirectory, PeerDirectory
from pyoverlay.driver.core.interfaces import Kernel, PeerEntries, RuleTables
from pyoverlay.driver.core.model import (
    EndpointSpec,
    NetworkSpec,
    Underlay,
    mac_from_ip,
    normalise_mac,
)
from pyoverlay.driver.core.ops import Op, PeerOp, undo
from pyoverlay.driver.core.options import PoolData, parse_network
from pyoverlay.driver.overlay import identity, peers, plan
from pyoverlay.driver.secure.keeper import Encryption
from pyoverlay.driver.servicelb import ruleset as vips

log = structlog.get_logger("pyoverlay.driver")


@dataclass(frozen=True)
class JoinResult:
    src_name: str
    dst_prefix: str = "eth"


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


# Where Docker keeps container namespaces; a managed plugin sees them through the
# `sandboxes` mount of config.json (a SandboxKey path is looked up there by name).
DEFAULT_SANDBOX_DIR = Path("/var/run/docker/netns")
# how long the first endpoint of a network on this host waits for the network's rows
FETCH_TIMEOUT = 2.0


def _short(id_: str) -> str:
    return id_[:12]


class OverlayDriver:
    def __init__(
        self,
        kernel: Kernel,
        state_file: Path,
        node_id: str,
        underlay: Underlay,
        directory: PeerDirectory | None = None,
        tables: RuleTables | None = None,
        sandbox_dir: Path = DEFAULT_SANDBOX_DIR,
    ) -> None:
        self.kernel = kernel
        # nftables in container namespaces (service VIPs); None: VIPs are not served
        self.tables = tables
        self.sandbox_dir = sandbox_dir
        self._sandbox_locks: dict[str, asyncio.Lock] = {}
        self.vip_errors: dict[str, str] = {}  # sandbox -> why its rules are not as wanted
        self._programmed: dict[str, vips.Programmed | None] = {}  # sandbox -> last applied
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
        # IPsec for `-o encrypted` and the VXLAN guard table (None: single host, no key)
        self.encryption: Encryption | None = None

    # -- state -------------------------------------------------------------

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

    async def _open_sandbox(self, net: NetworkSpec) -> list[Op]:
        """Build the network's sandbox and take part in its rows; returns what was made."""
        ops = plan.create_network(net, self.node_id, self.underlay)
        await apply_all(self.kernel, ops)
        self.directory.join_network(str(net.vni))
        log.info("sandbox created", nid=_short(net.network_id), vni=net.vni, ns=net.namespace)
        return ops

    async def _undo_sandbox(self, net: NetworkSpec, made: list[Op]) -> None:
        """Roll back what `_open_sandbox` made (nothing if it made nothing)."""
        if made:
            self.directory.leave_network(str(net.vni))
            await rollback(self.kernel, made)

    async def _close_sandbox(self, net: NetworkSpec) -> None:
        self.directory.leave_network(str(net.vni))
        await apply_all(self.kernel, plan.delete_network(net))
        log.info("sandbox removed", nid=_short(net.network_id), vni=net.vni, ns=net.namespace)

    async def _fetch_peers(self, net: NetworkSpec) -> None:
        """The cluster's endpoints of a network whose sandbox was just made, before the
        container starts (bounded: the periodic sync catches up after)."""
        if not await self.directory.network_ready(str(net.vni), FETCH_TIMEOUT):
            log.warning("network rows not fetched in time", vni=net.vni, timeout=FETCH_TIMEOUT)
        await self._sync_peers(net)

    def _lock(self, nid: str) -> asyncio.Lock:
        return self._locks.setdefault(nid, asyncio.Lock())

    def network(self, nid: str) -> NetworkSpec:
        net = self.networks.get(nid)
        if net is None:
            raise NotFound(
                f"network {_short(nid)} is not known to pyoverlay on this host; "
                "if its state was lost, remove and re-create the network"
            )
        return net

    def endpoint(self, nid: str, eid: str) -> EndpointSpec:
        ep = self.endpoints.get(eid)
        if ep is None or ep.network_id != nid:
            raise NotFound(
                f"endpoint {_short(eid)} is not known to pyoverlay on network {_short(nid)}"
            )
        return ep

    # -- NetworkDriver.CreateNetwork / DeleteNetwork -----------------------

    async def create_network(
        self,
        nid: str,
        generic: Mapping[str, object],
        ipv4: Sequence[PoolData],
        ipv6: Sequence[PoolData],
        enable_ipv6: bool,
        internal: bool,
    ) -> NetworkSpec:
        async with self._structure, self._lock(nid):
            if nid in self.networks:
                return self.networks[nid]
            spec = parse_network(nid, generic, ipv4, ipv6, enable_ipv6, internal, self.underlay)
            if spec.swarm and not self.clustered:
                raise InvalidOption(
                    "a swarm network needs pyoverlay's gossip on every node: set "
                    "PYOVERLAY_GOSSIP_KEY_FILE (the same key file on every node) with "
                    "`docker plugin set`, then enable the plugin again"
                )
            if self.clustered:
                self._check_identity(spec, ipv4[0].address_space)
            for other in self.networks.values():
                if other.vni == spec.vni:
                    how = "-o vni=N" if "vni" in spec.options else "another --subnet or -o vni=N"
                    raise Conflict(
                        f"VNI {spec.vni} is already used by network {_short(other.network_id)} "
                        f"(subnet {other.subnet}) on this host; pick {how}"
                    )
            self._check_encryption(spec)
            self.networks[nid] = spec
            try:
                await self._guard(spec)  # fail-closed rules before anything can send
                ops = await self._open_sandbox(spec) if self.eager else []
            except PyoverlayError:
                del self.networks[nid]
                await self._guard(None)
                raise
            try:
                self.save()
            except PyoverlayError:
                del self.networks[nid]
                await self._undo_sandbox(spec, ops)
                await self._guard(None)
                raise
            self.directory.publish(identity.scope(spec.vni), self.node_id, identity.record(spec))
            log.info("network created", nid=_short(nid), vni=spec.vni, mtu=spec.mtu)
            if ops:
                await self._fetch_peers(spec)
            return spec

    def _check_encryption(self, spec: NetworkSpec) -> None:
        if not spec.encrypted:
            return
        if self.encryption is None:
            raise InvalidOption(
                "-o encrypted needs pyoverlay's cluster key, from which the IPsec keys are "
                "derived: set PYOVERLAY_GOSSIP_KEY_FILE (the same key file on every host)"
            )
        if self.encryption.unsupported:
            raise InvalidOption(f"-o encrypted: {self.encryption.unsupported}")

    async def _guard(self, spec: NetworkSpec | None) -> None:
        """Bring the guard table and SAs in line with self.networks; for a new encrypted
        network (`spec`) a failure is an error (it must not exist without its rules)."""
        if self.encryption is None:
            return
        errors = await self.encryption.sync()
        if spec is not None and spec.encrypted and errors:
            raise PyoverlayError(f"-o encrypted: the IPsec rules failed: {'; '.join(errors)}")

    async def delete_network(self, nid: str) -> None:
        async with self._structure, self._lock(nid):
            net = self.network(nid)
            for ep in [e for e in self.endpoints.values() if e.network_id == nid]:
                await apply_all(self.kernel, plan.delete_endpoint(None, ep))
                del self.endpoints[ep.endpoint_id]
                self._withdraw(nid, ep.endpoint_id)
            await self._close_sandbox(net)  # idempotent: also when it had none
            del self.networks[nid]
            self.save()
            await self._guard(None)
            if not any(n.vni == net.vni for n in self.networks.values()):
                self.directory.withdraw(identity.scope(net.vni), self.node_id)
            log.info("network deleted", nid=_short(nid), ns=net.namespace)

    # -- endpoints -----------------------------------------------------------

    async def create_endpoint(
        self, nid: str, eid: str, address: str, address_v6: str, mac: str
    ) -> str | None:
        """Record the endpoint; returns the MAC if pyoverlay chose it (Docker sent none)."""
        async with self._lock(nid):
            net = self.network(nid)
            if eid in self.endpoints:
                return None
            if address_v6:
                raise InvalidOption("IPv6 endpoint addresses are not supported by pyoverlay yet")
            if not address:
                raise InvalidOption(
                    f"endpoint {_short(eid)} has no IPv4 address; pyoverlay needs one from IPAM"
                )
            try:
                iface = IPv4Interface(address)
            except ValueError as exc:
                raise InvalidOption(f"endpoint address {address!r}: {exc}") from None
            if iface.ip not in net.subnet:
                raise InvalidOption(
                    f"address {iface.ip} is outside the network's subnet {net.subnet}"
                )
            chosen = None
            if mac:
                mac = normalise_mac(mac)
            else:
                mac = chosen = mac_from_ip(iface.ip)
            ep = EndpointSpec(nid, eid, iface, mac)
            made = [] if self.active(nid) else await self._open_sandbox(net)
            self.endpoints[eid] = ep
            try:
                self.save()
            except PyoverlayError:
                del self.endpoints[eid]
                await self._undo_sandbox(net, made)
                raise
            log.info("endpoint created", nid=_short(nid), eid=_short(eid), mac=mac)
            if made:
                await self._fetch_peers(net)
            return chosen

    async def delete_endpoint(self, nid: str, eid: str) -> None:
        async with self._lock(nid):
            ep = self.endpoint(nid, eid)
            net = self.networks.get(nid)
            await apply_all(self.kernel, plan.delete_endpoint(net.namespace if net else None, ep))
            del self.endpoints[eid]
            self.save()
            self._withdraw(nid, eid)
            log.info("endpoint deleted", nid=_short(nid), eid=_short(eid))
            if net is not None and not self.active(nid):
                await self._close_sandbox(net)  # its last local endpoint
            if ep.sandbox:
                await self._sync_sandbox_quietly(ep.sandbox)
            if ep.vip and net is not None:
                await self.sync_vips(net.vni)

    async def join(self, nid: str, eid: str, sandbox_key: str) -> JoinResult:
        async with self._lock(nid):
            net = self.network(nid)
            ep = self.endpoint(nid, eid)
            ops = plan.join(net, ep)
            await apply_all(self.kernel, ops)
            joined = self.endpoints[eid] = replace(ep, joined=True, sandbox=sandbox_key)
            try:
                self.save()
            except PyoverlayError:
                self.endpoints[eid] = ep
                await rollback(self.kernel, ops)
                raise
            self.directory.publish(peers.scope(net.vni), eid, self._row(joined))
            await self._sync_sandbox_quietly(sandbox_key)  # the VIPs, before the task starts
            self.on_join(nid, eid)
            log.info(
                "joined",
                nid=_short(nid),
                eid=_short(eid),
                ifname=ep.container_ifname,
                sandbox=sandbox_key,
            )
            return JoinResult(ep.container_ifname)

    async def leave(self, nid: str, eid: str) -> None:
        async with self._lock(nid):
            ep = self.endpoint(nid, eid)
            self.endpoints[eid] = replace(ep, joined=False, sandbox="", service="", vip="")
            self.save()
            self._withdraw(nid, eid)
            log.info("left", nid=_short(nid), eid=_short(eid))
            await self._sync_sandbox_quietly(ep.sandbox)  # this network's VIPs leave it
            if ep.vip:
                await self.sync_vips(self.networks[nid].vni)  # and the task its VIP

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self.endpoint(nid, eid)
        net = self.network(nid)
        return {
            "pyoverlay.vni": net.vni,
            "pyoverlay.namespace": net.namespace,
            "pyoverlay.overlay_if": ep.overlay_ifname,
            "com.docker.network.endpoint.macaddress": ep.mac,
        }

    # -- peers ---------------------------------------------------------------

    def _withdraw(self, nid: str, eid: str) -> None:
        net = self.networks.get(nid)
        if net is not None:
            self.directory.withdraw(peers.scope(net.vni), eid)

    def _check_identity(self, spec: NetworkSpec, address_space: str) -> None:
        why = identity.needs_identity(spec, address_space)
        if why is not None:
            raise InvalidOption(why)
        others = identity.disagreements(spec, self.spec_rows(spec.vni), self.node_id)
        if others:
            host, diff = sorted(others.items())[0]
            raise Conflict(
                f"VNI {spec.vni} is already a different network on pyoverlay host {host} "
                f"({'; '.join(diff)}); create it with the same --subnet, --gateway, "
                "--aux-address, --internal and MTU as there, or use another --subnet / -o vni=N"
            )

    def spec_rows(self, vni: int) -> list[tuple[str, dict[str, Any]]]:
        return [(key, value) for key, value, _ in self.directory.rows(identity.scope(vni))]

    def disagreements(self) -> dict[str, dict[str, list[str]]]:
        """network id -> host -> how its spec of the same VNI differs from ours."""
        out = {}
        for net in self.networks.values():
            d = identity.disagreements(net, self.spec_rows(net.vni), self.node_id)
            if d:
                out[net.network_id] = d
        return out

    def publish_joined(self) -> None:
        """Re-announce every network spec and joined endpoint, and take part again in the
        networks with local endpoints (after a restart the cluster may have lost them)."""
        for spec in self.networks.values():
            self.directory.publish(identity.scope(spec.vni), self.node_id, identity.record(spec))
            if self.active(spec.network_id):
                self.directory.join_network(str(spec.vni))
        for ep in self.endpoints.values():
            net = self.networks.get(ep.network_id)
            if ep.joined and net is not None:
                self.directory.publish(peers.scope(net.vni), ep.endpoint_id, self._row(ep))

    def _row(self, ep: EndpointSpec) -> dict[str, Any]:
        return peers.row_value(ep.address.ip, ep.mac, self.underlay.address, ep.service, ep.vip)

    def remote_endpoints(self, vni: int) -> list[peers.RemoteEndpoint]:
        """The endpoint rows of a VNI, parsed; a row's parse is kept while its version
        stays (a reconcile of 5,000 unchanged rows parses none of them)."""
        seen = self._parsed.get(vni, {})
        now: dict[tuple[str, tuple[int, str]], peers.RemoteEndpoint | None] = {}
        for key, value, version in self.directory.rows(peers.scope(vni)):
            k = (key, version)
            now[k] = seen[k] if k in seen else peers.RemoteEndpoint.from_row(key, value, version)
        self._parsed[vni] = now
        return [r for r in now.values() if r is not None]

    def wanted_peers(self, vni: int) -> PeerEntries:
        """The entries a VNI's VTEP should have; worked out again only when its rows changed
        (a periodic reconcile of 5,000 unchanged rows reuses it)."""
        gen = self.directory.generation(peers.scope(vni))
        cached = self._wanted.get(vni)
        if cached is None or cached[0] != gen:
            cached = (gen, peers.desired(self.remote_endpoints(vni), self.underlay.address))
            self._wanted[vni] = cached
        return cached[1]

    async def plan_peers(self, net: NetworkSpec) -> list[PeerOp]:
        have = await self.kernel.peer_entries(net.namespace, net.vxlan)
        want = self.wanted_peers(net.vni)
        prune = self.prune_peers and self.directory.rows_complete(str(net.vni))
        keep = {IPv4Address(v) for v in self.directory.kept_vteps()}
        return peers.diff(net.namespace, net.vxlan, have, want, prune, keep)

    async def _sync_peers(self, net: NetworkSpec) -> list[PeerOp]:
        if not self.active(net.network_id):
            return []  # no sandbox here: no VTEP to program
        ops = await self.plan_peers(net)
        for exc in await self.kernel.apply_peer_ops(ops):  # in bulk: 10,000 entries in ~1 s
            log.error("peer programming failed", vni=net.vni, error=str(exc))
        if ops:
            log.info("peers programmed", vni=net.vni, ns=net.namespace, changes=len(ops))
        return ops

    async def sync_peers(self, vni: int | None = None) -> list[Op]:
        """Make the FDB/ARP entries of the networks with `vni` (or all) match the table."""
        done: list[Op] = []
        for net in list(self.networks.values()):
            if vni is not None and net.vni != vni:
                continue
            async with self._lock(net.network_id):
                if net.network_id in self.networks:
                    done += await self._sync_peers(net)
        return done

    # -- reconcile -----------------------------------------------------------

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
        await self.sync_vips(verify=True)
        return ops, errors

    # -- service VIPs (vips.py) ------------------------------------------------

    async def bind_service(self, nid: str, eid: str, service: str, vip: str) -> bool:
        """The local dockerd says endpoint `eid` is a task of `service` with `vip` on `nid`:
        publish it (every host balances the VIP over it). True if that changed anything."""
        async with self._lock(nid):
            ep = self.endpoints.get(eid)
            net = self.networks.get(nid)
            if ep is None or net is None or not ep.joined or ep.network_id != nid:
                return False
            if (ep.service, ep.vip) == (service, vip):
                return False
            bound = self.endpoints[eid] = replace(ep, service=service, vip=vip)
            self.save()
            self.directory.publish(peers.scope(net.vni), eid, self._row(bound))
            log.info("service task", nid=_short(nid), eid=_short(eid), service=service, vip=vip)
            await self.sync_vips(net.vni)
            return True

    def sandbox_path(self, key: str) -> Path:
        """Docker's SandboxKey as this process sees it (a managed plugin: by name, under
        its `sandboxes` mount)."""
        path = Path(key)
        return path if path.exists() else self.sandbox_dir / path.name

    def vips_of(self, vni: int) -> vips.Vips:
        return vips.services(vips.backends_of(self.directory.rows(peers.scope(vni))))

    def sandboxes(self, vni: int | None = None) -> dict[str, list[EndpointSpec]]:
        """Joined container namespaces -> their pyoverlay endpoints (on networks with `vni`)."""
        out: dict[str, list[EndpointSpec]] = {}
        for ep in self.endpoints.values():
            net = self.networks.get(ep.network_id)
            if ep.joined and ep.sandbox and net is not None and vni in (None, net.vni):
                out.setdefault(ep.sandbox, []).append(ep)
        return out

    def wanted_vips(self, sandbox: str, memo: dict[int, vips.Vips] | None = None) -> vips.Vips:
        """The VIPs of every network this container is on (`memo`: per-VNI answers already
        worked out, shared by a sweep over many containers)."""
        memo = {} if memo is None else memo
        vnis = {self.networks[e.network_id].vni for e in self.sandboxes().get(sandbox, [])}
        for vni in vnis - set(memo):
            memo[vni] = self.vips_of(vni)
        return vips.merge(memo[v] for v in sorted(vnis))

    async def programmed_vips(self, sandbox: str) -> vips.Programmed | None:
        if self.tables is None:
            return None
        path = self.sandbox_path(sandbox)
        return vips.parse(await self.tables.list_table(path, vips.FAMILY, vips.TABLE))

    async def sync_sandbox(
        self, sandbox: str, verify: bool = False, memo: dict[int, vips.Vips] | None = None
    ) -> int:
        """Make one container namespace's VIP rules match the table; the number of nft
        commands run (one transaction).  A namespace that is gone needs nothing.

        What was last programmed is remembered, so a change costs one small
        transaction and no read-back of the whole table (reading it grows with the
        number of services: 26 ms at 100, 300 ms at 1,000).  verify=True (the
        periodic reconciler) reads the kernel instead and so repairs drift; a
        transaction that fails on the remembered state is retried on a fresh read.
        """
        if self.tables is None or not sandbox:
            return 0
        lock = self._sandbox_locks.setdefault(sandbox, asyncio.Lock())
        async with lock:
            path = self.sandbox_path(sandbox)
            if not path.exists():
                self._forget_sandbox(sandbox)
                return 0
            if (
                sandbox in self._programmed
                and self._programmed[sandbox] is None
                and not self.wanted_vips(sandbox, memo)
            ):
                # nothing programmed and nothing wanted: no read-back (one libnftables
                # context per container every reconcile is what a busy host cannot afford)
                return 0
            try:
                cmds = await self._program(sandbox, path, verify, memo)
            except PyoverlayError as first:
                if verify:
                    self.vip_errors[sandbox] = str(first)
                    raise
                try:
                    cmds = await self._program(sandbox, path, True, memo)
                except PyoverlayError as exc:
                    self.vip_errors[sandbox] = str(exc)
                    raise
            self.vip_errors.pop(sandbox, None)
            if sandbox not in self.sandboxes():  # left: nothing more to remember
                self._forget_sandbox(sandbox)
            if cmds:
                log.info("vips programmed", sandbox=Path(sandbox).name, changes=cmds)
            return cmds

    async def _program(
        self, sandbox: str, path: Path, verify: bool, memo: dict[int, vips.Vips] | None
    ) -> int:
        assert self.tables is not None
        if verify:
            self._programmed.pop(sandbox, None)
        if sandbox in self._programmed:
            have = self._programmed[sandbox]
        else:
            have = await self.programmed_vips(sandbox)
        want = self.wanted_vips(sandbox, memo)
        if not self.prune_peers:  # the sync gate, as for FDB/ARP entries
            want = vips.keep(have, want)
        cmds = vips.plan(have, want)
        self._programmed.pop(sandbox, None)  # unknown until the transaction is through
        await self.tables.apply(path, cmds)
        live = {v: s for v, s in want.items() if s.backends}
        self._programmed[sandbox] = vips.Programmed(True, live) if live else None
        for vip, gone in sorted(vips.removed(have, want).items()):
            try:
                n = await self.tables.forget_flows(path, vip, gone)
            except PyoverlayError as exc:  # the rules are right; stale flows time out
                log.error("conntrack flows not forgotten", vip=str(vip), error=str(exc))
                continue
            if n:
                log.info("udp flows to removed tasks forgotten", vip=str(vip), flows=n)
        return len(cmds)

    def _forget_sandbox(self, sandbox: str) -> None:
        self.vip_errors.pop(sandbox, None)
        self._programmed.pop(sandbox, None)
        if sandbox not in self.sandboxes():
            self._sandbox_locks.pop(sandbox, None)

    async def _sync_sandbox_quietly(self, sandbox: str) -> None:
        try:
            await self.sync_sandbox(sandbox)
        except PyoverlayError as exc:
            log.error("vip rules failed", sandbox=Path(sandbox).name, error=str(exc))

    async def sync_vips(self, vni: int | None = None, verify: bool = False) -> int:
        """Make the VIP rules of every local container on networks with `vni` (or all)
        match the table (verify: read them back from the kernel first); returns the
        number of nft commands run."""
        changed = 0
        memo: dict[int, vips.Vips] = {}  # each network's VIPs worked out once per sweep
        for sandbox in sorted(self.sandboxes(vni)):
            try:
                changed += await self.sync_sandbox(sandbox, verify, memo)
            except PyoverlayError as exc:
                log.error("vip rules failed", sandbox=Path(sandbox).name, error=str(exc))
        return changed
