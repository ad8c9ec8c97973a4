"""Docker's CreateNetwork/DeleteNetwork, and each network's sandbox on this host
(namespace, br0, VTEP: made at the first local endpoint, removed after the last, as
Docker's overlay does; `eager`: with the network)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from pyoverlay.core.errors import Conflict, InvalidOption, PyoverlayError
from pyoverlay.driver.core.model import NetworkSpec
from pyoverlay.driver.core.ops import Op
from pyoverlay.driver.core.options import PoolData, parse_network
from pyoverlay.driver.overlay import identity, plan
from pyoverlay.driver.overlay.base import FETCH_TIMEOUT, apply_all, rollback
from pyoverlay.driver.overlay.base import short as _short
from pyoverlay.driver.overlay.peersync import PeerSync

HAS_IPV6 = Path("/proc/sys/net/ipv6").is_dir()  # absent when the kernel runs without IPv6

log = structlog.get_logger("pyoverlay.driver")


class Networks(PeerSync):
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
            if spec.subnet6 is not None and not HAS_IPV6:
                raise InvalidOption(
                    "this host's kernel runs without IPv6 (booted with ipv6.disable=1), so a "
                    "--ipv6 network cannot work here: remove --ipv6, or boot with IPv6"
                )
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
