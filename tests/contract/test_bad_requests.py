"""Malformed bodies and unknown IDs: Docker's error shape, the field named, nothing made."""

from __future__ import annotations

from typing import Any

from support import Services

from pyoverlay.plugin.app import make_app


async def test_malformed_json_and_missing_fields_name_the_problem(
    services: Services, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(make_app(services.driver, services.ipam))
    r = await client.post("/NetworkDriver.CreateNetwork", data=b'{"NetworkID": ')
    assert r.status == 400
    assert (
        "malformed NetworkDriver.CreateNetwork request: body is not valid JSON"
        in (await r.json())["Err"]
    )
    r = await client.post("/NetworkDriver.Join", json={"NetworkID": "n"})
    body = await r.json()
    assert r.status == 400 and "field EndpointID: Field required" in body["Err"]
    r = await client.post("/IpamDriver.RequestAddress", json={"Address": "10.0.0.1"})
    body = await r.json()
    assert r.status == 400 and "Err" not in body and "field PoolID: Field required" in body["Error"]
    r = await client.post("/NetworkDriver.NoSuchMethod", json={})
    assert r.status == 404  # Docker reads this as "not implemented"
    assert services.kernel.applied == [] and services.driver.networks == {}


async def test_unknown_ids_and_a_failed_create_leave_nothing(
    services: Services, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(make_app(services.driver, services.ipam))
    r = await client.post(
        "/NetworkDriver.CreateEndpoint",
        json={
            "NetworkID": "f" * 64,
            "EndpointID": "e" * 64,
            "Interface": {"Address": "10.0.0.2/24"},
        },
    )
    assert "network ffffffffffff is not known to pyoverlay" in (await r.json())["Err"]
    body = {
        "NetworkID": "a" * 64,
        "Options": {"com.docker.network.generic": {}},
        "IPv4Data": [{"Pool": "10.5.0.0/24", "Gateway": "10.5.0.1/24"}],
    }
    r = await client.post("/NetworkDriver.CreateNetwork", json=body)
    assert await r.json() == {}
    assert set(services.kernel.namespaces) == {""}  # lazy: no sandbox before an endpoint
    # the first endpoint builds the sandbox; the kernel refuses half-way through
    services.kernel.fail_on = "ensure vxlan"
    endpoint = {"NetworkID": "a" * 64, "EndpointID": "e" * 64, "Interface": {}}
    endpoint["Interface"] = {"Address": "10.5.0.2/24"}
    r = await client.post("/NetworkDriver.CreateEndpoint", json=endpoint)
    err = (await r.json())["Err"]
    assert "injected failure" in err and "rolled back" in err
    assert set(services.kernel.namespaces) == {""}  # no namespace, no bridge, no VTEP left
    assert services.driver.endpoints == {}
    services.kernel.fail_on = ""
    r = await client.post("/NetworkDriver.CreateEndpoint", json=endpoint)  # a retry works
    assert "Err" not in await r.json()
    assert len(services.kernel.namespaces) == 2
