"""Remote endpoints from the replicated table -> this host's FDB/ARP entries (peers.py
decides), and this host's own rows: endpoints, network specs, identity checks."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import structlog

from pyoverlay.core.errors import Conflict, InvalidOption
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec
from pyoverlay.driver.core.ops import Op, PeerOp
from pyoverlay.driver.overlay import identity, peers
from pyoverlay.driver.overlay.base import DriverBase

log = structlog.get_logger("pyoverlay.driver")


class PeerSync(DriverBase):
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
        ip6 = ep.address6.ip if ep.address6 is not None else None
        return peers.row_value(
            ep.address.ip, ep.mac, self.underlay.address, ep.service, ep.vip, ip6
        )

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
