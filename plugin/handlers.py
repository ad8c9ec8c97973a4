"""Thin handlers: parse the body, call the driver or IPAM service, render.

Each handler implements one call of moby's docs/remote.md (NetworkDriver)
or docs/ipam.md (IpamDriver); none holds logic of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from pyoverlay.core.errors import InvalidOption
from pyoverlay.core.ip import V6_SWARM
from pyoverlay.driver.core.options import PoolData
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.ipam.service import IpamService
from pyoverlay.ipam.spaces import GLOBAL_SPACE
from pyoverlay.plugin import handshake
from pyoverlay.plugin import protocol as p
from pyoverlay.plugin.errors import reply

M = TypeVar("M", bound=BaseModel)
DRIVER: web.AppKey[OverlayDriver] = web.AppKey("driver", OverlayDriver)
IPAM: web.AppKey[IpamService] = web.AppKey("ipam", IpamService)
SCOPE: web.AppKey[str] = web.AppKey("scope", str)
SWARM: web.AppKey[SwarmAllocations | None] = web.AppKey("swarm", object)  # type: ignore[arg-type]
DISCOVER: web.AppKey[Callable[[str, bool], None]] = web.AppKey("discover", object)  # type: ignore[arg-type]

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"


async def parse(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    return model.model_validate_json(raw if raw.strip() else b"{}")


# -- Plugin, and the capabilities (plugin/handshake.py: also answered before start-up) --


async def handshake_call(request: web.Request) -> web.Response:
    return reply(handshake.answers(request.app[SCOPE])[request.path])


# -- NetworkDriver ---------------------------------------------------------------


async def create_network(request: web.Request) -> web.Response:
    req = await parse(request, p.CreateNetworkRequest)
    opts = req.options or {}
    generic = opts.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise InvalidOption(f"Options.{GENERIC} must be an object of strings")
    spec = await request.app[DRIVER].create_network(
        req.network_id,
        generic,
        [
            PoolData(d.pool, d.gateway, d.address_space, tuple((d.aux_addresses or {}).values()))
            for d in req.ipv4_data or []
        ],
        [
            PoolData(d.pool, d.gateway, d.address_space, tuple((d.aux_addresses or {}).values()))
            for d in req.ipv6_data or []
        ],
        bool(opts.get(ENABLE_IPV6, False)),
        bool(opts.get(INTERNAL, False)),
    )
    for d in [*(req.ipv4_data or []), *(req.ipv6_data or [])]:
        request.app[IPAM].network_created(d.address_space, d.pool, swarm=spec.swarm)
    return reply({})


async def delete_network(request: web.Request) -> web.Response:
    req = await parse(request, p.NetworkRequest)
    await request.app[DRIVER].delete_network(req.network_id)
    return reply({})


async def create_endpoint(request: web.Request) -> web.Response:
    req = await parse(request, p.CreateEndpointRequest)
    iface = req.interface or p.EndpointInterface()
    mac = await request.app[DRIVER].create_endpoint(
        req.network_id, req.endpoint_id, iface.address, iface.address_ipv6, iface.mac_address
    )
    # Only what Docker did not send may be returned ("driver modified interface ...").
    return reply({"Interface": {"MacAddress": mac} if mac else {}})


async def delete_endpoint(request: web.Request) -> web.Response:
    req = await parse(request, p.EndpointRequest)
    await request.app[DRIVER].delete_endpoint(req.network_id, req.endpoint_id)
    return reply({})


async def endpoint_oper_info(request: web.Request) -> web.Response:
    req = await parse(request, p.EndpointRequest)
    return reply({"Value": request.app[DRIVER].endpoint_info(req.network_id, req.endpoint_id)})


async def join(request: web.Request) -> web.Response:
    req = await parse(request, p.JoinRequest)
    res = await request.app[DRIVER].join(req.network_id, req.endpoint_id, req.sandbox_key)
    # No Gateway: Docker then adds the docker_gwbridge leg (eth1, default route),
    # as for Swarm's overlay; --internal networks get none.
    return reply({"InterfaceName": {"SrcName": res.src_name, "DstPrefix": res.dst_prefix}})


async def leave(request: web.Request) -> web.Response:
    req = await parse(request, p.EndpointRequest)
    await request.app[DRIVER].leave(req.network_id, req.endpoint_id)
    return reply({})


async def external_connectivity(request: web.Request) -> web.Response:
    # Only sent to the endpoint that provides the default gateway; pyoverlay
    # never does (docker_gwbridge does), so there is nothing to program.
    await parse(request, p.ExternalConnectivityRequest)
    return reply({})


NODE_DISCOVERY = 1


async def discover(request: web.Request) -> web.Response:
    """DiscoverNew: swarm tells a global-scope plugin about this node (Self, its data-path
    address) and every other swarm node (control-plane address): gossip seeds."""
    req = await parse(request, p.DiscoveryRequest)
    data = req.discovery_data or {}
    if req.discovery_type == NODE_DISCOVERY and request.path.endswith("DiscoverNew"):
        addr = str(data.get("Address") or "")
        if addr:
            request.app[DISCOVER](addr, bool(data.get("Self")))
    return reply({})


async def allocate_network(request: web.Request) -> web.Response:
    req = await parse(request, p.AllocateNetworkRequest)
    allocations = request.app[SWARM]
    if allocations is None:
        raise InvalidOption(
            "this pyoverlay runs with --scope local: swarm networks need the managed plugin "
            "with PYOVERLAY_SCOPE=global on every node (`docker plugin set`)"
        )
    if req.ipv6_data or any(":" in d.pool for d in req.ipv4_data or []):
        # swarmkit 20.10 sends an IPv6 --subnet inside IPv4Data (docs/research-ipv6.md)
        allocations.refuse(req.network_id, f"pyoverlay refuses {V6_SWARM}")
        raise InvalidOption(f"pyoverlay refuses {V6_SWARM}")
    options = allocations.allocate(req.network_id, req.options or {})
    return reply({"Options": options})


async def free_network(request: web.Request) -> web.Response:
    req = await parse(request, p.NetworkRequest)
    allocations = request.app[SWARM]
    if allocations is not None:
        allocations.free(req.network_id)
    return reply({})


# -- IpamDriver ------------------------------------------------------------------


async def request_pool(request: web.Request) -> web.Response:
    req = await parse(request, p.RequestPoolRequest)
    allocations = request.app[SWARM]
    refused_pool = f"pool {req.pool or '(default)'}"
    try:
        pool = request.app[IPAM].request_pool(
            req.address_space, req.pool, req.sub_pool, req.options or {}, req.v6
        )
    except InvalidOption as exc:
        if allocations is not None and req.address_space == GLOBAL_SPACE:  # swarm's leader
            allocations.refuse(refused_pool, str(exc))
        raise
    if allocations is not None:
        allocations.refused.pop(refused_pool, None)  # asked again, and accepted now
    return reply({"PoolID": pool.pool_id, "Pool": str(pool.subnet), "Data": {}})


async def release_pool(request: web.Request) -> web.Response:
    req = await parse(request, p.ReleasePoolRequest)
    await request.app[IPAM].release_pool(req.pool_id)
    return reply({})


async def request_address(request: web.Request) -> web.Response:
    req = await parse(request, p.RequestAddressRequest)
    ip, prefix = await request.app[IPAM].request_address(req.pool_id, req.address, req.options)
    data: dict[str, Any] = {}
    return reply({"Address": f"{ip}/{prefix}", "Data": data})


async def release_address(request: web.Request) -> web.Response:
    req = await parse(request, p.ReleaseAddressRequest)
    await request.app[IPAM].release_address(req.pool_id, req.address)
    return reply({})


ROUTES: dict[str, Any] = {
    "/Plugin.Activate": handshake_call,
    "/NetworkDriver.GetCapabilities": handshake_call,
    "/NetworkDriver.CreateNetwork": create_network,
    "/NetworkDriver.DeleteNetwork": delete_network,
    "/NetworkDriver.CreateEndpoint": create_endpoint,
    "/NetworkDriver.DeleteEndpoint": delete_endpoint,
    "/NetworkDriver.EndpointOperInfo": endpoint_oper_info,
    "/NetworkDriver.Join": join,
    "/NetworkDriver.Leave": leave,
    "/NetworkDriver.ProgramExternalConnectivity": external_connectivity,
    "/NetworkDriver.RevokeExternalConnectivity": external_connectivity,
    "/NetworkDriver.DiscoverNew": discover,
    "/NetworkDriver.DiscoverDelete": discover,
    "/NetworkDriver.AllocateNetwork": allocate_network,
    "/NetworkDriver.FreeNetwork": free_network,
    "/IpamDriver.GetCapabilities": handshake_call,
    "/IpamDriver.GetDefaultAddressSpaces": handshake_call,
    "/IpamDriver.RequestPool": request_pool,
    "/IpamDriver.ReleasePool": release_pool,
    "/IpamDriver.RequestAddress": request_address,
    "/IpamDriver.ReleaseAddress": release_address,
}
