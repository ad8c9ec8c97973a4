"""Replay every request a real Docker 20.10 engine sent (tests/fixtures/docker-20.10).

Each directory is replayed in arrival order against the real aiohttp app, wired
to the in-memory kernel.  The test keeps its own model of what should exist
(networks and endpoints pyoverlay accepted) and checks every answer against it:

* the HTTP status is 200, the body JSON, and errors use the interface's key
  (Err for NetworkDriver, Error for IpamDriver) - never the other one;
* CreateNetwork with options pyoverlay does not know, or with IPv6, is refused
  with a message naming each offending option; otherwise it builds the seed's
  sandbox (namespace 1-<id10>, br0 with the gateway, the VTEP);
* endpoints of accepted networks get a MAC from their IP when Docker sent none,
  a veth whose container end (SrcName) is in the host namespace after Join, and
  that veth is gone after DeleteEndpoint; networks vanish on DeleteNetwork;
* IPAM pools and addresses follow Docker's requests (PoolIDs of the recording
  are mapped to pyoverlay's);
* at "75-plugin-restart-state-loss" the plugin is restarted from its state
  dir, and what follows still works (Docker never re-sends CreateNetwork);
* the managed-plugin recording (a real swarm) is replayed with the plugin in
  global scope and gossip on: AllocateNetwork allocates a VNI and the nodes'
  CreateNetwork gets what it returned (as Docker forwards it; the recorder
  had returned nothing), pyoverlay's IPAM refuses the swarm (global) space,
  and a local network without a user-given identity is refused.
The recorder's address-space names are mapped to pyoverlay's.
"""

from __future__ import annotations

import json
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any

import pytest
from support import Services

from pyoverlay.driver.core.model import mac_from_ip, namespace_name, veth_names
from pyoverlay.driver.core.options import ALLOCATED_VNI, KNOWN_OPTIONS
from pyoverlay.driver.overlay import peers
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.ipam.spaces import GLOBAL_SPACE, LOCAL_SPACE
from pyoverlay.plugin.app import make_app
from testing.fakes import HOST

FIXTURES = Path(__file__).parent.parent / "fixtures" / "docker-20.10"
DIRS = ["", "managed-plugin", "swarm-legacy-plugin"]
RESTART_SCENARIO = "75-plugin-restart-state-loss"
SPACES = {'"RecorderLocal"': f'"{LOCAL_SPACE}"', '"RecorderGlobal"': f'"{GLOBAL_SPACE}"'}


def load(directory: str) -> list[dict[str, Any]]:
    files = sorted((FIXTURES / directory).glob("[0-9][0-9][0-9]-*.json"))
    return [json.loads(f.read_text()) | {"file": f.name} for f in files]


def test_fixtures_are_all_there() -> None:
    total = sum(len(load(d)) for d in DIRS)
    assert total >= 350, total


class Model:
    """What pyoverlay has accepted so far (from its own successful answers)."""

    def __init__(self) -> None:
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, str] = {}  # eid -> nid
        self.ip6: dict[str, str] = {}  # eid -> its IPv6 address (dual stack)
        self.pool_ids: dict[str, str] = {}  # recorded PoolID -> ours
        self.pools: dict[str, IPv4Network | IPv6Network] = {}  # ours -> subnet
        self.allocated: dict[str, dict[str, str]] = {}  # swarm network -> AllocateNetwork's answer
        self.swarm_created = 0  # CreateNetworks accepted with an allocated VNI


def expected_network_error(req: dict[str, Any], clustered: bool) -> list[str]:
    """Substrings the error must contain, or [] when the network must be accepted."""
    opts = req.get("Options") or {}
    generic = opts.get("com.docker.network.generic") or {}
    unknown = [f"-o {k}={v}" for k, v in generic.items() if k not in KNOWN_OPTIONS]
    if unknown:
        return unknown
    if opts.get("com.docker.network.enable_ipv6") or req.get("IPv6Data"):
        if len(req.get("IPv6Data") or []) != 1:
            return ["--ipv6", "exactly one IPv6 --subnet"]
        if clustered and ALLOCATED_VNI in generic:
            return ["swarm-scope"]  # swarm gives one address per task, of either family
    space = (req.get("IPv4Data") or [{}])[0].get("AddressSpace", "")
    ours = space.startswith(("pyoverlay-", "Recorder"))  # the recorder's names map to ours
    named = ALLOCATED_VNI in generic or "vni" in generic or ours
    if clustered and not named:
        return ["-o vni=N"]
    return []


async def post(client: Any, path: str, raw: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        path,
        data=raw.encode(),
        headers={"Accept": "application/vnd.docker.plugins.v1.2+json"},
    )
    return resp.status, json.loads(await resp.text())


def strip_ipam_options(req: dict[str, Any]) -> dict[str, Any]:
    """The recording used --ipam-opt on every pool; pyoverlay refuses unknown ones.

    The second replay drops them so the pool and address flows behind them
    (--ip-range, --aux-address, --gateway, release) are exercised too.
    """
    opts = req.get("Options") or {}
    return req | {"Options": {k: v for k, v in opts.items() if k.startswith("com.docker.")}}


@pytest.mark.parametrize("ipam_opts", ["as-recorded", "stripped"])
@pytest.mark.parametrize("directory", DIRS, ids=lambda d: d or "main")
async def test_replay(directory: str, ipam_opts: str, tmp_path: Path, aiohttp_client: Any) -> None:
    scope = "global" if directory == "managed-plugin" else "local"

    def app(svc: Services) -> Any:
        svc.driver.clustered = scope == "global"  # swarm networks need the gossip
        swarm = SwarmAllocations(tmp_path / "swarm.json") if scope == "global" else None
        return make_app(svc.driver, svc.ipam, scope, swarm)

    svc = Services(tmp_path)
    client = await aiohttp_client(app(svc))
    model = Model()
    restarted = False
    checked = 0
    succeeded: dict[str, int] = {}

    for fx in load(directory):
        if fx["scenario"] == RESTART_SCENARIO and not restarted:
            await client.close()
            svc = svc.restarted()
            await svc.driver.reconcile()
            client = await aiohttp_client(app(svc))
            restarted = True

        path: str = fx["path"]
        req: dict[str, Any] = fx["request"] or {}
        raw: str = fx["raw_request_body"]
        if ipam_opts == "stripped" and path == "/IpamDriver.RequestPool":
            req = strip_ipam_options(req)
            raw = json.dumps(req)
        for recorded, ours in model.pool_ids.items():
            raw = raw.replace(json.dumps(recorded), json.dumps(ours))
        for recorded, ours in SPACES.items():
            raw = raw.replace(recorded, ours)
        if path == "/NetworkDriver.CreateNetwork" and req.get("NetworkID") in model.allocated:
            # what Docker forwards to every node: AllocateNetwork's answer (ours, not the
            # recorder's empty one)
            req = json.loads(raw)
            req["Options"]["com.docker.network.generic"] = model.allocated[req["NetworkID"]]
            raw = json.dumps(req)
        status, body = await post(client, path, raw)
        where = f"{directory}/{fx['file']} ({fx['scenario']})"
        assert status == 200, (where, status, body)
        wrong_key = "Err" if path.startswith("/IpamDriver.") else "Error"
        assert wrong_key not in body, (where, body)
        err = body.get("Error" if path.startswith("/IpamDriver.") else "Err")
        method = path.split(".", 1)[1]
        nid = req.get("NetworkID", "")
        eid = req.get("EndpointID", "")

        match path:
            case "/Plugin.Activate":
                assert body == {"Implements": ["NetworkDriver", "IpamDriver"]}
            case "/NetworkDriver.GetCapabilities":
                assert body == {"Scope": scope, "ConnectivityScope": scope}
            case "/IpamDriver.GetCapabilities":
                assert body["RequiresMACAddress"] is False
            case "/IpamDriver.GetDefaultAddressSpaces":
                assert set(body) == {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}
            case "/NetworkDriver.CreateNetwork":
                want = expected_network_error(req, scope == "global")
                if want:
                    assert err, (where, body)
                    for text in want:
                        assert text in err, (where, err, text)
                    assert namespace_name(nid) not in svc.kernel.namespaces
                else:
                    assert err is None, (where, err)
                    # lazy: the sandbox waits for the first local endpoint
                    assert namespace_name(nid) not in svc.kernel.namespaces
                    model.networks[nid] = req
                    model.swarm_created += nid in model.allocated
            case "/NetworkDriver.DeleteNetwork":
                if nid in model.networks:
                    assert err is None, (where, err)
                    del model.networks[nid]
                    model.endpoints = {e: n for e, n in model.endpoints.items() if n != nid}
                    assert namespace_name(nid) not in svc.kernel.namespaces
                else:
                    assert err and "not known to pyoverlay" in err, (where, body)
            case "/NetworkDriver.CreateEndpoint":
                iface = req["Interface"]
                if nid in model.networks:
                    assert err is None, (where, err)
                    if iface["MacAddress"]:
                        assert body == {"Interface": {}}
                    else:
                        ip = IPv4Interface(iface["Address"]).ip
                        assert body == {"Interface": {"MacAddress": mac_from_ip(ip)}}
                    model.endpoints[eid] = nid
                    ns = svc.kernel.namespaces[namespace_name(nid)]  # the sandbox is there
                    gw = IPv4Interface(model.networks[nid]["IPv4Data"][0]["Gateway"])
                    assert gw in ns["br0"].addresses
                    for v6 in model.networks[nid].get("IPv6Data") or []:  # dual stack
                        assert IPv6Interface(v6["Gateway"]) in ns["br0"].addresses
                    assert "AddressIPv6" not in body["Interface"]  # Docker's, never changed
                    if iface.get("AddressIPv6"):
                        model.ip6[eid] = iface["AddressIPv6"].split("/")[0]
                    vx = [link for link in ns.values() if link.kind == "vxlan"]
                    assert len(vx) == 1 and vx[0].master == "br0" and vx[0].mtu == 1450
                else:
                    assert err and "not known to pyoverlay" in err, (where, body)
            case "/NetworkDriver.Join":
                if model.endpoints.get(eid) == nid:
                    assert err is None, (where, err)
                    src = body["InterfaceName"]["SrcName"]
                    assert body["InterfaceName"]["DstPrefix"] == "eth"
                    assert "Gateway" not in body  # docker_gwbridge provides the default route
                    assert src in svc.kernel.namespaces[HOST]
                    overlay_end = svc.kernel.namespaces[namespace_name(nid)][veth_names(eid)[1]]
                    assert overlay_end.master == "br0"
                    # the row every other host programs from: IPv6 beside IPv4 on dual stack
                    vni = svc.driver.networks[nid].vni
                    (row,) = [
                        v for k, v, _ in svc.driver.directory.rows(peers.scope(vni)) if k == eid
                    ]
                    assert row.get("ip6") == model.ip6.get(eid), (where, row)
                else:
                    assert err, (where, body)
            case "/NetworkDriver.Leave":
                assert (err is None) == (model.endpoints.get(eid) == nid), (where, body)
            case "/NetworkDriver.DeleteEndpoint":
                if model.endpoints.get(eid) == nid:
                    assert err is None, (where, err)
                    del model.endpoints[eid]
                    assert veth_names(eid)[0] not in svc.kernel.namespaces[HOST]
                    last = nid not in model.endpoints.values()  # then the sandbox goes too
                    assert (namespace_name(nid) in svc.kernel.namespaces) != last, where
                else:
                    assert err, (where, body)
            case "/NetworkDriver.EndpointOperInfo":
                if model.endpoints.get(eid) == nid:
                    assert "Value" in body, (where, body)
                else:
                    assert err, (where, body)
            case "/NetworkDriver.AllocateNetwork":
                unknown = [k for k in req.get("Options") or {} if k not in KNOWN_OPTIONS]
                if scope == "local":
                    assert err and "PYOVERLAY_SCOPE=global" in err, (where, body)
                elif unknown:  # refused on the manager, before any node sees the network
                    assert err and all(f"-o {k}=" in err for k in unknown), (where, body)
                else:
                    assert err is None, (where, body)
                    assert body["Options"][ALLOCATED_VNI].isdigit(), body
                    model.allocated[nid] = body["Options"]
            case "/NetworkDriver.FreeNetwork":
                assert err is None, (where, body)
            case "/IpamDriver.RequestPool":
                options = req.get("Options") or {}
                bad = [k for k in options if not k.startswith("com.docker.network.")]
                if bad:
                    assert err and all(f"--ipam-opt {k}" in err for k in bad), (where, body)
                elif req.get("V6") and not req.get("Pool"):
                    assert err and "--ipv6 needs an IPv6 --subnet" in err, (where, body)
                else:
                    assert err is None, (where, err)
                    if req.get("Pool"):
                        assert body["Pool"] == req["Pool"]
                    recorded_id = (fx["response"] or {}).get("PoolID", body["PoolID"])
                    model.pool_ids[recorded_id] = body["PoolID"]
                    model.pools[body["PoolID"]] = ip_network(body["Pool"])
            case "/IpamDriver.RequestAddress":
                pool_id = model.pool_ids.get(req["PoolID"])
                if pool_id in model.pools:
                    assert err is None, (where, err)
                    got = ip_interface(body["Address"])
                    assert got.network == model.pools[pool_id]
                    if req.get("Address"):
                        assert got.ip == ip_address(req["Address"])
                else:
                    assert err and "not known" in err, (where, body)
            case "/IpamDriver.ReleaseAddress" | "/IpamDriver.ReleasePool":
                pool_id = model.pool_ids.get(req["PoolID"])
                assert (err is None) == (pool_id in model.pools), (where, body)
                if path.endswith("ReleasePool") and pool_id:
                    model.pools.pop(pool_id, None)
            case _:
                assert err is None, (where, method, body)
        checked += 1
        if err is None:
            succeeded[method] = succeeded.get(method, 0) + 1

    # Nothing is left in the kernel that the model does not account for.
    expected_ns = {namespace_name(n) for n in model.networks if n in model.endpoints.values()}
    assert {n for n in svc.kernel.namespaces if n != HOST} == expected_ns
    host_veths = {n for n in svc.kernel.namespaces[HOST] if n.startswith("pyc")}
    assert host_veths <= {veth_names(e)[0] for e in model.endpoints}
    assert checked == len(load(directory))
    if directory == "managed-plugin":  # a swarm network allocated, created on the node, used
        assert succeeded.get("AllocateNetwork", 0) >= 1, succeeded
        assert model.swarm_created >= 1, succeeded
        assert succeeded.get("Join", 0) >= 1, succeeded
    if directory == "":  # the main recording must exercise the whole life cycle
        for method in ("CreateNetwork", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint"):
            assert succeeded.get(method, 0) >= 5, (method, succeeded)
        assert succeeded.get("DeleteNetwork", 0) >= 3, succeeded
        assert len(model.ip6) >= 2, model.ip6  # dual-stack endpoints (--ipv6), both recorded
        if ipam_opts == "stripped":
            assert succeeded.get("RequestAddress", 0) >= 5, succeeded
