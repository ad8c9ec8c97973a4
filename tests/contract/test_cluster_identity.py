"""In a cluster a network's identity comes from the user, and hosts must agree on it.

The driver and IPAM run as in a cluster (clustered driver, cluster IPAM
guard); other hosts' network specs are rows in the directory, as gossip
would deliver them.  What Docker sees is the refusal text; nothing is made.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from support import Services

from pyoverlay.driver.core.model import NetworkSpec
from pyoverlay.driver.overlay import identity
from pyoverlay.plugin.app import make_app

GENERIC = "com.docker.network.generic"


def create(pool: str, space: str, **generic: str) -> dict[str, Any]:
    return {
        "NetworkID": "c" * 64,
        "Options": {GENERIC: generic},
        "IPv4Data": [{"AddressSpace": space, "Pool": pool, "Gateway": pool[:-4] + "1/24"}],
    }


class ClusteredGuard:
    """The IPAM's cluster switch only (no claims needed here)."""

    clustered = True

    def may_allocate(self, subnet, ip):
        return False

    def spans(self, subnet):
        return []

    def to_json(self):
        return {}

    def load(self, d):
        return None


async def test_a_cluster_network_must_be_named_by_the_user(
    services: Services, aiohttp_client: Any
) -> None:
    services.driver.clustered = True
    services.ipam.guard = ClusteredGuard()  # type: ignore[assignment]
    client = await aiohttp_client(make_app(services.driver, services.ipam))
    r = await client.post("/IpamDriver.RequestPool", json={"AddressSpace": "pyoverlay-local"})
    err = (await r.json())["Error"]
    assert "in a pyoverlay cluster a network needs --subnet" in err, err
    # Docker's default IPAM picked the subnet: it may be a per-host choice
    r = await client.post(
        "/NetworkDriver.CreateNetwork", json=create("172.19.0.0/16", "LocalDefault")
    )
    err = (await r.json())["Err"]
    assert "--ipam-driver pyoverlay with --subnet, or give -o vni=N" in err, err
    # ... unless the user named the overlay
    r = await client.post(
        "/NetworkDriver.CreateNetwork", json=create("172.19.0.0/16", "LocalDefault", vni="4000")
    )
    assert await r.json() == {}
    assert services.ipam.pools == {}


async def test_a_vni_another_host_uses_differently_is_refused_naming_the_host(
    services: Services, aiohttp_client: Any
) -> None:
    services.driver.clustered = True
    client = await aiohttp_client(make_app(services.driver, services.ipam))
    there = NetworkSpec(
        "d" * 64, 7000, IPv4Network("100.7.0.0/24"), IPv4Interface("100.7.0.1/24"), 1400
    )
    services.driver.directory.publish(identity.scope(7000), "host-b", identity.record(there))
    r = await client.post(
        "/NetworkDriver.CreateNetwork", json=create("100.7.0.0/24", "pyoverlay-local", vni="7000")
    )
    err = (await r.json())["Err"]
    assert "VNI 7000 is already a different network on pyoverlay host host-b" in err, err
    assert "mtu 1450 here, 1400 there" in err
    assert services.driver.networks == {} and set(services.kernel.namespaces) == {""}
    # the same spec as there: accepted, and this host's spec is published for the others
    r = await client.post(
        "/NetworkDriver.CreateNetwork",
        json=create(
            "100.7.0.0/24",
            "pyoverlay-local",
            vni="7000",
            **{"com.docker.network.driver.mtu": "1400"},
        ),
    )
    assert await r.json() == {}
    rows = dict(services.driver.spec_rows(7000))
    assert rows["node1"] == rows["host-b"]
