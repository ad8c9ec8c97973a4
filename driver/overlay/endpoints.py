"""Docker's CreateEndpoint/DeleteEndpoint, Join/Leave, EndpointOperInfo, and the
swarm service a local task belongs to (its row carries service + VIP)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

import structlog

from pyoverlay.core.errors import InvalidOption, PyoverlayError
from pyoverlay.driver.core.model import EndpointSpec, NetworkSpec, mac_from_ip, normalise_mac
from pyoverlay.driver.overlay import peers, plan
from pyoverlay.driver.overlay.base import apply_all, rollback
from pyoverlay.driver.overlay.base import short as _short
from pyoverlay.driver.overlay.networks import Networks

log = structlog.get_logger("pyoverlay.driver")


@dataclass(frozen=True)
class JoinResult:
    src_name: str
    dst_prefix: str = "eth"


class Endpoints(Networks):
    async def create_endpoint(
        self, nid: str, eid: str, address: str, address_v6: str, mac: str
    ) -> str | None:
        """Record the endpoint; returns the MAC if pyoverlay chose it (Docker sent none)."""
        async with self._lock(nid):
            net = self.network(nid)
            if eid in self.endpoints:
                return None
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
            iface6 = _address6(net, address_v6)
            chosen = None
            if mac:
                mac = normalise_mac(mac)
            else:
                mac = chosen = mac_from_ip(iface.ip)
            ep = EndpointSpec(nid, eid, iface, mac, address6=iface6)
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
                await self.services.sync_sandbox_quietly(ep.sandbox)
            if ep.vip and net is not None:
                await self.services.sync_vips(net.vni)

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
            await self.services.sync_sandbox_quietly(
                sandbox_key
            )  # the VIPs, before the task starts
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
            await self.services.sync_sandbox_quietly(ep.sandbox)  # this network's VIPs leave it
            if ep.vip:
                await self.services.sync_vips(self.networks[nid].vni)  # and the task its VIP

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self.endpoint(nid, eid)
        net = self.network(nid)
        return {
            "pyoverlay.vni": net.vni,
            "pyoverlay.namespace": net.namespace,
            "pyoverlay.overlay_if": ep.overlay_ifname,
            "com.docker.network.endpoint.macaddress": ep.mac,
        }

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
            await self.services.sync_vips(net.vni)
            return True


def _address6(net: NetworkSpec, text: str) -> IPv6Interface | None:
    """The endpoint's IPv6 address (Docker's IPAM answer, CIDR), on a dual-stack network."""
    if not text:
        return None
    if net.subnet6 is None:
        raise InvalidOption(
            f"endpoint address {text} is IPv6, but the network has no IPv6 subnet "
            "(create it with --ipv6 and an IPv6 --subnet)"
        )
    try:
        iface = IPv6Interface(text)
    except ValueError as exc:
        raise InvalidOption(f"endpoint IPv6 address {text!r}: {exc}") from None
    if iface.ip not in net.subnet6:
        raise InvalidOption(f"address {iface.ip} is outside the network's subnet {net.subnet6}")
    return iface
