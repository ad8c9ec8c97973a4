"""Kernel operations as data.

The planner (plan.py) decides *what* to change and returns a list of these;
the kernel adapter (pyroute.py, or FakeKernel in tests) carries them out, each
one idempotently: an Ensure* op that finds its object already in the wanted
shape changes nothing, a Delete* op on a missing object is a no-op.  The same
list is what `reconcile --dry-run` prints.

`ns=None` means the host namespace (the Docker daemon's).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface

from pyoverlay.core.ip import IPAddr


@dataclass(frozen=True)
class CreateNamespace:
    name: str

    def __str__(self) -> str:
        return f"create namespace {self.name}"


@dataclass(frozen=True)
class DeleteNamespace:
    name: str

    def __str__(self) -> str:
        return f"delete namespace {self.name}"


@dataclass(frozen=True)
class EnsureBridge:
    ns: str
    name: str
    mtu: int
    address: IPv4Interface | None
    alias: str
    address6: IPv6Interface | None = None  # a dual-stack network's IPv6 gateway

    def __str__(self) -> str:
        addr = "".join(f" {a}" for a in (self.address, self.address6) if a)
        return f"ensure bridge {self.ns}/{self.name} mtu {self.mtu}{addr}"


@dataclass(frozen=True)
class EnsureVxlan:
    """Create in the host namespace (its UDP socket stays on the underlay), move, enslave."""

    ns: str
    name: str
    vni: int
    port: int
    local: IPv4Address
    mtu: int
    bridge: str

    def __str__(self) -> str:
        return (
            f"ensure vxlan {self.ns}/{self.name} vni {self.vni} dstport {self.port} "
            f"local {self.local} mtu {self.mtu} master {self.bridge}"
        )


@dataclass(frozen=True)
class EnsureVeth:
    """A veth pair: container end in the host ns, overlay end in `ns` on `bridge`."""

    container_name: str
    ns: str
    overlay_name: str
    mtu: int
    mac: str
    bridge: str

    def __str__(self) -> str:
        return (
            f"ensure veth {self.container_name} (mac {self.mac}) <-> "
            f"{self.ns}/{self.overlay_name} master {self.bridge} mtu {self.mtu}"
        )


@dataclass(frozen=True)
class DeleteLink:
    ns: str | None
    name: str

    def __str__(self) -> str:
        where = self.ns if self.ns else "host"
        return f"delete link {where}/{self.name}"


@dataclass(frozen=True)
class ReplaceFdb:
    """A remote MAC behind a remote VTEP (`bridge fdb replace MAC dev VX dst VTEP self`)."""

    ns: str
    dev: str
    mac: str
    dst: IPv4Address

    def __str__(self) -> str:
        return f"fdb replace {self.mac} dev {self.ns}/{self.dev} dst {self.dst}"


@dataclass(frozen=True)
class DeleteFdb:
    ns: str
    dev: str
    mac: str
    dst: IPv4Address

    def __str__(self) -> str:
        return f"fdb delete {self.mac} dev {self.ns}/{self.dev} dst {self.dst}"


@dataclass(frozen=True)
class ReplaceNeigh:
    """A remote IP's MAC, answered by the VTEP's ARP proxy: `ip neigh replace ... nud permanent`."""

    ns: str
    dev: str
    ip: IPAddr
    mac: str

    def __str__(self) -> str:
        return f"neigh replace {self.ip} lladdr {self.mac} dev {self.ns}/{self.dev}"


@dataclass(frozen=True)
class DeleteNeigh:
    ns: str
    dev: str
    ip: IPAddr

    def __str__(self) -> str:
        return f"neigh delete {self.ip} dev {self.ns}/{self.dev}"


Op = (
    CreateNamespace
    | DeleteNamespace
    | EnsureBridge
    | EnsureVxlan
    | EnsureVeth
    | DeleteLink
    | ReplaceFdb
    | DeleteFdb
    | ReplaceNeigh
    | DeleteNeigh
)

PeerOp = ReplaceFdb | DeleteFdb | ReplaceNeigh | DeleteNeigh  # applied in bulk (apply_peer_ops)


def undo(op: Op) -> list[Op]:
    """What removes the object `op` created (used to roll back a failed call)."""
    match op:
        case CreateNamespace(name=name):
            return [DeleteNamespace(name)]
        case EnsureBridge(ns=ns, name=name):
            return [DeleteLink(ns, name)]
        case EnsureVxlan(ns=ns, name=name):
            return [DeleteLink(ns, name), DeleteLink(None, name)]
        case EnsureVeth(container_name=c, ns=ns, overlay_name=o):
            return [DeleteLink(None, c), DeleteLink(ns, o)]
        case _:
            return []
