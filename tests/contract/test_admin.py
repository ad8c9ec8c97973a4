"""The admin endpoint the CLI talks to: status, peers (table vs kernel), reconcile, metrics."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from support import Services

from pyoverlay.driver.core.directory import LocalDirectory
from pyoverlay.driver.core.ops import DeleteNeigh, ReplaceFdb
from pyoverlay.driver.overlay import peers
from pyoverlay.driver.servicelb.programmer import VipProgrammer
from pyoverlay.plugin.admin import make_admin_app
from pyoverlay.plugin.app import make_app
from pyoverlay.plugin.parts import Parts

NID = "ab" * 32
EID = "cd" * 32
NETWORK = {
    "NetworkID": NID,
    "Options": {"com.docker.network.generic": {}},
    "IPv4Data": [{"Pool": "10.60.0.0/24", "Gateway": "10.60.0.1/24"}],
}
ENDPOINT = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.60.0.5/24"}}


async def setup(services: Services, aiohttp_client: Any):
    plugin = await aiohttp_client(make_app(services.driver, services.ipam))
    admin = await aiohttp_client(make_admin_app(Parts(services.driver)))
    assert await (await plugin.post("/NetworkDriver.CreateNetwork", json=NETWORK)).json() == {}
    await plugin.post("/NetworkDriver.CreateEndpoint", json=ENDPOINT)
    await plugin.post(
        "/NetworkDriver.Join", json={"NetworkID": NID, "EndpointID": EID, "SandboxKey": ""}
    )
    await plugin.post(
        "/NetworkDriver.Join", json={"NetworkID": "nope", "EndpointID": EID}
    )  # an error
    # a remote endpoint in the table, as gossip would deliver it
    directory = services.driver.directory
    assert isinstance(directory, LocalDirectory)
    directory.put(
        peers.scope(services.driver.networks[NID].vni),
        "remote",
        peers.row_value(IPv4Address("10.60.0.9"), "02:42:0a:3c:00:09", IPv4Address("192.0.2.20")),
        (5, "other"),
    )
    return plugin, admin


async def test_peers_shows_table_rows_next_to_the_kernel_and_reconcile_repairs(
    services: Services, aiohttp_client: Any
) -> None:
    _, admin = await setup(services, aiohttp_client)
    view = (await (await admin.get("/peers")).json())[0]
    states = {p["ip"]: p["state"] for p in view["peers"]}
    assert states == {"10.60.0.5": "local", "10.60.0.9": "missing"}
    dry = await (await admin.post("/reconcile?dry_run=1")).json()
    assert dry["dry_run"] and any("fdb replace 02:42:0a:3c:00:09" in op for op in dry["ops"])
    done = await (await admin.post("/reconcile")).json()
    assert not done["errors"]
    view = (await (await admin.get("/peers")).json())[0]
    assert {p["ip"]: p["state"] for p in view["peers"]}["10.60.0.9"] == "ok"
    # drift: a stale entry by hand, a programmed one deleted
    net = services.driver.networks[NID]
    await services.kernel.apply(
        ReplaceFdb(net.namespace, net.vxlan, "02:00:00:00:00:99", IPv4Address("192.0.2.99"))
    )
    await services.kernel.apply(DeleteNeigh(net.namespace, net.vxlan, IPv4Address("10.60.0.9")))
    view = (await (await admin.get("/peers")).json())[0]
    assert view["stale"] == [{"kind": "fdb", "mac": "02:00:00:00:00:99", "dst": "192.0.2.99"}]
    assert {p["ip"]: p["state"] for p in view["peers"]}["10.60.0.9"] == "missing"
    await admin.post("/reconcile")
    view = (await (await admin.get("/peers")).json())[0]
    assert view["stale"] == [] and {p["state"] for p in view["peers"]} == {"local", "ok"}


async def test_status_and_metrics(services: Services, aiohttp_client: Any) -> None:
    _, admin = await setup(services, aiohttp_client)
    st = await (await admin.get("/status")).json()
    assert (
        st["health"] == "ok"
        and st["networks"][0]["endpoints"] == 1
        and st["members"] == {"alive": 1}
    )
    await admin.post("/reconcile")
    text = await (await admin.get("/metrics")).text()
    assert 'pyoverlay_calls_total{method="NetworkDriver.Join"}' in text
    assert 'pyoverlay_call_errors_total{method="NetworkDriver.Join"}' in text
    assert 'pyoverlay_call_seconds_bucket{le="+Inf",method="NetworkDriver.CreateNetwork"}' in text
    assert "pyoverlay_fdb_entries 1" in text and "pyoverlay_neigh_entries 1" in text
    assert 'pyoverlay_gossip_members{state="alive"} 1' in text


async def test_leave_in_single_host_mode_says_there_is_no_cluster(
    services: Services, aiohttp_client: Any
) -> None:
    admin = await aiohttp_client(make_admin_app(Parts(services.driver)))
    assert "no cluster to leave" in (await (await admin.post("/leave")).json())["error"]


async def test_services_shows_vips_tasks_and_each_containers_rules(
    services: Services, aiohttp_client: Any, tmp_path: Any
) -> None:
    from testing.fakes import FakeTables

    tables = FakeTables()
    programmer = services.driver.services = VipProgrammer(services.driver, tables, tmp_path)
    (tmp_path / "sb1").touch()
    plugin = await aiohttp_client(make_app(services.driver, services.ipam))
    admin = await aiohttp_client(make_admin_app(Parts(services.driver, vips=programmer)))
    await plugin.post("/NetworkDriver.CreateNetwork", json=NETWORK)
    await plugin.post("/NetworkDriver.CreateEndpoint", json=ENDPOINT)
    join = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/sb1"}
    assert (await (await plugin.post("/NetworkDriver.Join", json=join)).json())["InterfaceName"]
    vni = services.driver.networks[NID].vni
    services.driver.directory.publish(
        peers.scope(vni),
        "remote",
        peers.row_value(
            IPv4Address("10.60.0.9"), "m", IPv4Address("192.0.2.20"), "web", "10.60.0.2"
        ),
    )
    await programmer.sync_vips(vni)
    view = (await (await admin.get("/services")).json())[0]
    assert view["services"] == [
        {
            "vip": "10.60.0.2",
            "service": "web",
            "backends": [{"ip": "10.60.0.9", "endpoint": "remote", "host": "192.0.2.20"}],
        }
    ]
    (box,) = view["containers"]
    assert box["vips"] == {"10.60.0.2": "ok"} and box["intact"] and not box["error"]
    tables.tables.clear()  # deleted by hand
    (box,) = (await (await admin.get("/services")).json())[0]["containers"]
    assert box["vips"] == {"10.60.0.2": "missing"}
    await admin.post("/reconcile")
    (box,) = (await (await admin.get("/services")).json())[0]["containers"]
    assert box["vips"] == {"10.60.0.2": "ok"}
