"""Dual stack in the driver (on the fake kernel): a `--ipv6` network's gateway on br0, an
endpoint's IPv6 address in its row and its state, a remote row's IPv6 neighbour, and the
reconciler putting back what went missing. Bad input is refused with nothing left."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

import pytest
from support import Services

from pyoverlay.core.errors import InvalidOption
from pyoverlay.driver.core.interfaces import LinkView
from pyoverlay.driver.core.model import namespace_name
from pyoverlay.driver.core.options import PoolData
from pyoverlay.driver.overlay import peers

NID = "d6" * 32
EID = "e6" * 32
V4 = [PoolData("10.9.6.0/24", "10.9.6.1/24", "PyoverlayLocal")]
V6 = [PoolData("fd00:9:6::/64", "fd00:9:6::1/64", "PyoverlayLocal")]
GW6 = IPv6Interface("fd00:9:6::1/64")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def dual(tmp_path: Path) -> tuple[Services, int]:
    svc = Services(tmp_path)
    spec = run(svc.driver.create_network(NID, {}, V4, V6, True, False))
    return svc, spec.vni


def test_an_endpoint_publishes_both_addresses_and_br0_carries_both_gateways(
    tmp_path: Path,
) -> None:
    svc, vni = dual(tmp_path)
    run(svc.driver.create_endpoint(NID, EID, "10.9.6.2/24", "fd00:9:6::2/64", ""))
    run(svc.driver.join(NID, EID, "/var/run/docker/netns/x"))
    ns = namespace_name(NID)
    assert GW6 in svc.kernel.namespaces[ns]["br0"].addresses
    (row,) = [v for k, v, _ in svc.driver.directory.rows(peers.scope(vni)) if k == EID]
    assert (row["ip"], row["ip6"]) == ("10.9.6.2", "fd00:9:6::2")

    # a remote dual-stack endpoint: both its addresses become neighbours of the VTEP
    row = peers.row_value(
        IPv4Address("10.9.6.9"), "02:42:0a:09:06:09", IPv4Address("192.0.2.9"),
        ip6=IPv6Address("fd00:9:6::9"),
    )  # fmt: skip
    svc.driver.directory.put(peers.scope(vni), "remote", row, (1, "node2"))
    run(svc.driver.sync_peers(vni))
    have = run(svc.kernel.peer_entries(ns, svc.driver.networks[NID].vxlan))
    assert have.neigh == {
        IPv4Address("10.9.6.9"): "02:42:0a:09:06:09",
        IPv6Address("fd00:9:6::9"): "02:42:0a:09:06:09",
    }

    # a restart keeps both families, and the reconciler puts back a lost IPv6 gateway
    again = svc.restarted()
    assert again.driver.networks[NID].gateway6 == GW6
    assert again.driver.endpoints[EID].address6 == IPv6Interface("fd00:9:6::2/64")
    br0 = again.kernel.namespaces[ns]["br0"]
    again.kernel.namespaces[ns]["br0"] = LinkView(
        "br0", "bridge", br0.mtu, True, alias=br0.alias,
        addresses=tuple(a for a in br0.addresses if a.version == 4),
    )  # fmt: skip
    ops, errors = run(again.driver.reconcile())
    assert not errors and any("fd00:9:6::1/64" in str(op) for op in ops), ops
    assert GW6 in again.kernel.namespaces[ns]["br0"].addresses


def test_bad_ipv6_input_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    svc, _ = dual(tmp_path)
    with pytest.raises(InvalidOption, match="fd00:1::2 is outside the network's subnet fd00:9:6"):
        run(svc.driver.create_endpoint(NID, EID, "10.9.6.2/24", "fd00:1::2/64", ""))
    assert EID not in svc.driver.endpoints
    assert namespace_name(NID) not in svc.kernel.namespaces
    v4only = Services(tmp_path / "v4")
    run(v4only.driver.create_network(NID, {}, V4, [], False, False))
    with pytest.raises(InvalidOption, match="the network has no IPv6 subnet"):
        run(v4only.driver.create_endpoint(NID, EID, "10.9.6.2/24", "fd00:9:6::2/64", ""))
    assert EID not in v4only.driver.endpoints


def test_a_kernel_without_ipv6_refuses_a_dual_stack_network_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyoverlay.driver.overlay import networks

    monkeypatch.setattr(networks, "HAS_IPV6", False)
    svc = Services(tmp_path)
    with pytest.raises(InvalidOption, match="ipv6.disable=1"):
        run(svc.driver.create_network(NID, {}, V4, V6, True, False))
    assert NID not in svc.driver.networks
    run(svc.driver.create_network(NID, {}, V4, [], False, False))  # IPv4 alone still works
