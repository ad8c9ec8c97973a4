"""Lazy sandboxes: a network's namespace, br0 and VTEP exist on a host only while it has a
local endpoint there, and only then does the host take part in the network's rows."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from support import Services

from pyoverlay.driver.core.directory import LocalDirectory
from pyoverlay.driver.core.model import namespace_name
from pyoverlay.driver.core.options import PoolData
from pyoverlay.driver.overlay import peers

NID = "ab" * 32
POOL = [PoolData("10.9.0.0/24", "10.9.0.1/24", "PyoverlayLocal")]


class Recording(LocalDirectory):
    """The single-host directory, with a remote row and a record of joins and leaves."""

    def __init__(self) -> None:
        super().__init__("node1")
        self.log: list[str] = []
        self.ready_asks: list[str] = []

    def join_network(self, net: str) -> None:
        super().join_network(net)
        self.log.append(f"join {net}")

    def leave_network(self, net: str) -> None:
        super().leave_network(net)
        self.log.append(f"leave {net}")

    async def network_ready(self, net: str, timeout: float) -> bool:
        self.ready_asks.append(net)
        # what the fetch brings: an endpoint on another host
        row = peers.row_value(
            IPv4Address("10.9.0.77"), "02:42:0a:09:00:4d", IPv4Address("192.0.2.9")
        )
        self.put(f"peer/{net}", "remote", row, (1, "node2"))
        return True


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def setup(tmp_path: Path, eager: bool = False) -> tuple[Services, Recording, str]:
    svc = Services(tmp_path)
    svc.driver.directory = rec = Recording()
    svc.driver.eager = eager
    spec = run(svc.driver.create_network(NID, {}, POOL, [], False, False))
    return svc, rec, str(spec.vni)


def test_the_sandbox_lives_from_the_first_endpoint_to_the_last(tmp_path: Path) -> None:
    svc, rec, vni = setup(tmp_path)
    ns = namespace_name(NID)
    assert ns not in svc.kernel.namespaces and rec.log == []
    assert svc.driver.remote_endpoints(int(vni)) == []

    run(svc.driver.create_endpoint(NID, "e1" * 32, "10.9.0.2/24", "", ""))
    assert ns in svc.kernel.namespaces and rec.log == [f"join {vni}"]
    assert rec.ready_asks == [vni]  # the rows were fetched before Docker went on
    fdb = run(svc.kernel.peer_entries(ns, svc.driver.networks[NID].vxlan)).fdb
    assert fdb == {"02:42:0a:09:00:4d": IPv4Address("192.0.2.9")}  # programmed at once

    run(svc.driver.create_endpoint(NID, "e2" * 32, "10.9.0.3/24", "", ""))
    run(svc.driver.delete_endpoint(NID, "e1" * 32))
    assert ns in svc.kernel.namespaces and rec.log == [f"join {vni}"]
    run(svc.driver.delete_endpoint(NID, "e2" * 32))
    assert ns not in svc.kernel.namespaces
    assert rec.log == [f"join {vni}", f"leave {vni}"]
    assert NID in svc.driver.networks  # the network itself stays until DeleteNetwork


def test_a_restart_takes_part_again_and_reconcile_removes_an_unused_sandbox(
    tmp_path: Path,
) -> None:
    svc, rec, vni = setup(tmp_path)
    run(svc.driver.create_endpoint(NID, "e1" * 32, "10.9.0.2/24", "", ""))
    again = svc.restarted()
    again.driver.directory = rec2 = Recording()
    again.driver.publish_joined()
    assert rec2.log == [f"join {vni}"]
    ops, errors = run(again.driver.reconcile())
    assert namespace_name(NID) in again.kernel.namespaces and not errors

    # the endpoint went while the plugin was down (state says none): the sandbox goes
    del again.driver.endpoints["e1" * 32]
    run(again.driver.reconcile())
    assert namespace_name(NID) not in again.kernel.namespaces


def test_eager_builds_at_create_and_keeps_it(tmp_path: Path) -> None:
    svc, rec, vni = setup(tmp_path, eager=True)
    assert namespace_name(NID) in svc.kernel.namespaces and rec.log == [f"join {vni}"]
    run(svc.driver.create_endpoint(NID, "e1" * 32, "10.9.0.2/24", "", ""))
    run(svc.driver.delete_endpoint(NID, "e1" * 32))
    assert namespace_name(NID) in svc.kernel.namespaces
    run(svc.driver.delete_network(NID))
    assert namespace_name(NID) not in svc.kernel.namespaces
    assert rec.log == [f"join {vni}", f"leave {vni}"]
