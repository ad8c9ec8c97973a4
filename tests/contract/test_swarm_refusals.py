"""What swarm's leader sends for `docker network create --scope swarm --ipv6 ...` (swarmkit
20.10: the IPv6 subnet inside IPv4Data, pools asked with V6 false) is refused with the
reason, and the refusal is kept for `pyoverlay status`: Docker itself shows the user no
error (the network is listed, never allocated; its tasks stay New)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import Services

from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.plugin.app import make_app

NID = "q1w2e3r4t5y6u7i8o9p0a1s2d"
HEADERS = {"Accept": "application/vnd.docker.plugins.v1.2+json"}


async def post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(path, data=json.dumps(body).encode(), headers=HEADERS)
    assert resp.status == 200
    return dict(json.loads(await resp.text()))


async def test_ipv6_on_a_swarm_network_is_refused_and_remembered(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    svc = Services(tmp_path)
    svc.driver.clustered = True
    swarm = SwarmAllocations(tmp_path / "swarm.json")
    client = await aiohttp_client(make_app(svc.driver, svc.ipam, "global", swarm))

    # with --ipam-driver pyoverlay: the leader's allocator asks for the IPv6 pool (V6 false)
    body = await post(client, "/IpamDriver.RequestPool", {
        "AddressSpace": "pyoverlay-global", "Pool": "fd00:1::/64", "SubPool": "",
        "Options": {}, "V6": False,
    })  # fmt: skip
    assert "swarm-scope network" in body["Error"] and "--scope local" in body["Error"], body
    assert svc.ipam.pools == {}
    # with Docker's IPAM: AllocateNetwork gets the IPv6 subnet among the IPv4 ones
    body = await post(client, "/NetworkDriver.AllocateNetwork", {
        "NetworkID": NID, "Options": {"com.docker.network.enable_ipv6": "true"},
        "IPv4Data": [{"AddressSpace": "", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"},
                     {"AddressSpace": "", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}],
        "IPv6Data": None,
    })  # fmt: skip
    assert "IPv4 or IPv6, never both" in body["Err"], body
    assert swarm.held == {}  # no VNI taken
    assert set(swarm.refused) == {"pool fd00:1::/64", NID}
    assert "swarm-scope network" in swarm.refused[NID]
    # an IPv4-only allocation of the same network later succeeds and clears the refusal
    body = await post(client, "/NetworkDriver.AllocateNetwork", {
        "NetworkID": NID, "Options": {},
        "IPv4Data": [{"AddressSpace": "", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
    })  # fmt: skip
    assert "Err" not in body and NID in swarm.held and NID not in swarm.refused
    # a pool refused, then asked again and accepted (the user fixed it): no warning left
    pool = {"AddressSpace": "pyoverlay-global", "Pool": "10.2.0.0/24", "SubPool": "", "V6": False}
    body = await post(client, "/IpamDriver.RequestPool", pool | {"Options": {"color": "red"}})
    assert "--ipam-opt color=red" in body["Error"] and "pool 10.2.0.0/24" in swarm.refused
    assert "PoolID" in await post(client, "/IpamDriver.RequestPool", pool | {"Options": {}})
    assert set(swarm.refused) == {"pool fd00:1::/64"}
