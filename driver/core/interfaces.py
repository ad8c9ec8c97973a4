"""The seam between the driver and the kernel.

`Kernel` is what the driver needs from netlink; `pyroute.PyrouteKernel` is the
real one and `fake.FakeKernel` an in-memory one for the unit and contract
tests (mypy checks that both satisfy the Protocol).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any, Protocol

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.ip import IPAddr
from pyoverlay.driver.core.ops import Op, PeerOp


@dataclass(frozen=True)
class LinkView:
    name: str
    kind: str  # "bridge", "vxlan", "veth", ...
    mtu: int
    up: bool
    master: str | None = None
    vni: int | None = None
    vxlan_port: int | None = None
    vxlan_local: IPv4Address | None = None
    mac: str | None = None
    alias: str | None = None
    addresses: tuple[IPv4Interface | IPv6Interface, ...] = ()


@dataclass(frozen=True)
class NamespaceView:
    name: str
    links: dict[str, LinkView] = field(default_factory=dict)

    @property
    def marker(self) -> str | None:
        br = self.links.get("br0")
        return br.alias if br else None


@dataclass(frozen=True)
class PeerEntries:
    """What is programmed on one VTEP: remote MAC -> VTEP, remote IP -> MAC.

    Only entries pyoverlay could have made are listed (FDB rows with a
    destination, permanent IPv4 and IPv6 neighbours); the VTEP's own MAC and other
    kernel-owned entries are left out, so a diff never "repairs" them.
    """

    fdb: dict[str, IPv4Address] = field(default_factory=dict)
    neigh: dict[IPAddr, str] = field(default_factory=dict)  # IPv4 (ARP) and IPv6 (NDP)


@dataclass(frozen=True)
class KernelSnapshot:
    """What pyoverlay-looking objects exist right now."""

    namespaces: dict[str, NamespaceView]
    host_links: dict[str, LinkView]


@dataclass(frozen=True)
class UnderlayInfo:
    address: IPv4Address
    ifname: str
    mtu: int


class Kernel(Protocol):
    async def apply(self, op: Op) -> bool:
        """Carry out one op idempotently; True if the kernel changed."""
        ...

    async def snapshot(self) -> KernelSnapshot:
        """Namespaces named like ours (with their links) and our links in the host ns."""
        ...

    async def underlay(self, address: IPv4Address | None) -> UnderlayInfo:
        """The local VTEP address (given, or derived from the routes) and its link's MTU."""
        ...

    async def peer_entries(self, ns: str, dev: str) -> PeerEntries:
        """FDB and neighbour entries pyoverlay-style on `dev` in `ns` (empty if it is missing)."""
        ...

    async def apply_peer_ops(self, ops: Sequence[PeerOp]) -> list[PyoverlayError]:
        """Carry out FDB/ARP ops in bulk (no round trip per entry); what failed, and why."""
        ...

    async def close(self) -> None: ...


class RuleTables(Protocol):
    """nftables in a network namespace (driver/nft.py; fake.FakeTables in tests)."""

    async def apply(self, netns: Path | None, commands: list[dict[str, Any]]) -> None:
        """Run libnftables JSON commands as one transaction in the namespace at `netns`."""
        ...

    async def list_table(self, netns: Path | None, family: str, name: str) -> Any | None:
        """`nft -j list table` there, or None if the table does not exist."""
        ...

    async def forget_flows(
        self, netns: Path | None, vip: IPv4Address, gone: Collection[IPv4Address]
    ) -> int:
        """Delete the conntrack UDP flows to `vip` that tasks in `gone` answer (there)."""
        ...

    def close(self) -> None: ...


class NetworkGuard(Protocol):
    """IPsec and the VXLAN guard table, as the overlay driver sees them (secure/keeper.py):
    brought in line whenever a network appears or goes."""

    unsupported: str | None  # why this kernel cannot encrypt (None: it can)

    async def sync(self) -> list[str]:
        """Make SAs, policies and the guard table match; the errors."""
        ...


class ServiceRules(Protocol):
    """Service VIP rules in container namespaces, as the overlay driver calls them
    (servicelb/programmer.py)."""

    async def sync_sandbox_quietly(self, sandbox: str) -> None:
        """One container namespace's rules in line (errors logged, not raised)."""
        ...

    async def sync_vips(self, vni: int | None = None, verify: bool = False) -> int:
        """Every local container's rules on networks with `vni` (or all) in line."""
        ...


class NoServiceRules:
    """No VIPs served (standalone hosts, or --docker-host none)."""

    async def sync_sandbox_quietly(self, sandbox: str) -> None:
        return None

    async def sync_vips(self, vni: int | None = None, verify: bool = False) -> int:
        return 0
