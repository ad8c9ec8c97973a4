"""Values of the overlay data plane and the names pyoverlay gives kernel objects.

Every kernel object name is derived from IDs, fits IFNAMSIZ (15 bytes) and
carries a prefix that marks it as ours, so the start-up sweep can find stale
ones:

    namespace   1-<network id[:10]>        (the seed's layout; visible to `ip netns`)
    vxlan       pvx<vni:06x>-<nid[:5]>     (created in the host ns, then moved in; not
                                           "vx-" so it never looks like Docker's own)
    bridge      br0                        (inside the namespace)
    veth        pyc<eid[:10]>              container end, handed to Docker as SrcName
                pyv<eid[:10]>              overlay end, enslaved to br0

The namespace of every network also carries an ownership marker on br0's
ifalias, `pyoverlay:<node id>:<network id>`, so several pyoverlay plugins
sharing one /run/netns (several Docker hosts on one machine) never sweep
each other's namespaces.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

IFNAMSIZ = 15
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
# ESP transport, AES-GCM: SPI 4 + sequence 4 + IV 8 + ICV 16 + pad length 1 + next header 1
# + padding 0..3 = 37 at most; rounded up to 40 (encrypted networks)
ESP_OVERHEAD = 40
FLAG_TRUE = ("", "true", "1", "yes", "on")  # -o encrypted arrives as ""
MIN_MTU = 576
VNI_MIN = 1
VNI_MAX = 2**24 - 1
# Derived VNIs live in the top half of the 24-bit space, away from the range
# Docker's swarm overlay allocates from (4096 upwards).
DERIVED_VNI_BASE = 2**23
NS_PREFIX = "1-"
VXLAN_PREFIX = "pvx"
VETH_CONTAINER_PREFIX = "pyc"
VETH_OVERLAY_PREFIX = "pyv"
BRIDGE_NAME = "br0"
MARKER_PREFIX = "pyoverlay:"


def namespace_name(network_id: str) -> str:
    return f"{NS_PREFIX}{network_id[:10]}"


def vxlan_name(vni: int, network_id: str) -> str:
    return f"{VXLAN_PREFIX}{vni:06x}-{network_id[:5]}"


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(container end, overlay end) of an endpoint's veth pair."""
    return (
        f"{VETH_CONTAINER_PREFIX}{endpoint_id[:10]}",
        f"{VETH_OVERLAY_PREFIX}{endpoint_id[:10]}",
    )


def ownership_marker(node_id: str, network_id: str) -> str:
    return f"{MARKER_PREFIX}{node_id}:{network_id}"


def parse_marker(alias: str | None) -> tuple[str, str] | None:
    """(node id, network id) from a br0 ifalias, or None if it is not ours."""
    if not alias or not alias.startswith(MARKER_PREFIX):
        return None
    parts = alias[len(MARKER_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def mac_from_ip(ip: IPv4Address) -> str:
    """02:42 followed by the four address bytes, as Docker's overlay does."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def derive_vni(subnet: IPv4Network) -> int:
    """The same --subnet on every host gives the same VNI, so the same overlay.

    A hash of the normalised subnet text, folded into [2**23, 2**24 - 1].
    Two different subnets can collide (about 1 in 8 million per pair); a
    collision on one host is refused with a clear error and `-o vni=N` picks
    another.
    """
    digest = hashlib.sha256(str(subnet).encode()).digest()
    return DERIVED_VNI_BASE + int.from_bytes(digest[:4], "big") % (VNI_MAX - DERIVED_VNI_BASE + 1)


def normalise_mac(mac: str) -> str:
    return mac.strip().lower()


@dataclass(frozen=True)
class NetworkSpec:
    """One pyoverlay network on this host, as persisted and as built."""

    network_id: str
    vni: int
    subnet: IPv4Network
    gateway: IPv4Interface | None
    mtu: int
    internal: bool = False
    # Free-form options as the user gave them, kept for `inspect`-style output.
    options: dict[str, str] = field(default_factory=dict, compare=False)
    aux: tuple[str, ...] = ()  # --aux-address values (reserved, the same on every host)
    # --ipv6: the network's IPv6 subnet and the gateway address br0 carries (dual stack)
    subnet6: IPv6Network | None = None
    gateway6: IPv6Interface | None = None

    @property
    def namespace(self) -> str:
        return namespace_name(self.network_id)

    @property
    def swarm(self) -> bool:
        """A swarm-scoped network: its VNI came from the swarm leader (AllocateNetwork)."""
        return "pyoverlay.vni" in self.options

    @property
    def encrypted(self) -> bool:
        """`-o encrypted`: its VXLAN between hosts is ESP (driver/ipsec.py)."""
        v = self.options.get("encrypted")
        return v is not None and v.strip().lower() in FLAG_TRUE

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.vni, self.network_id)

    def to_json(self) -> dict[str, object]:
        return {
            "network_id": self.network_id,
            "vni": self.vni,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway) if self.gateway else None,
            "mtu": self.mtu,
            "internal": self.internal,
            "options": dict(self.options),
            "aux": list(self.aux),
            **({"subnet6": str(self.subnet6)} if self.subnet6 else {}),
            **({"gateway6": str(self.gateway6)} if self.gateway6 else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> NetworkSpec:
        gw, s6, gw6 = d.get("gateway"), d.get("subnet6"), d.get("gateway6")
        opts = d.get("options") or {}
        assert isinstance(opts, dict)
        return cls(
            network_id=str(d["network_id"]),
            vni=int(str(d["vni"])),
            subnet=IPv4Network(str(d["subnet"])),
            gateway=IPv4Interface(str(gw)) if gw else None,
            mtu=int(str(d["mtu"])),
            internal=bool(d.get("internal", False)),
            options={str(k): str(v) for k, v in opts.items()},
            aux=tuple(str(a) for a in _list(d.get("aux"))),
            subnet6=IPv6Network(str(s6)) if s6 else None,
            gateway6=IPv6Interface(str(gw6)) if gw6 else None,
        )


def _list(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else []


@dataclass(frozen=True)
class EndpointSpec:
    """One container attachment: an address on a network and its veth pair."""

    network_id: str
    endpoint_id: str
    address: IPv4Interface
    mac: str
    joined: bool = False
    sandbox: str = ""  # the container's namespace file (Join's SandboxKey) while joined
    service: str = ""  # swarm service of this task and its VIP on the network, once
    vip: str = ""  # the local dockerd reported them (driver/vips.py); "" otherwise
    address6: IPv6Interface | None = None  # on a dual-stack network

    @property
    def container_ifname(self) -> str:
        return veth_names(self.endpoint_id)[0]

    @property
    def overlay_ifname(self) -> str:
        return veth_names(self.endpoint_id)[1]

    def to_json(self) -> dict[str, object]:
        return {
            "network_id": self.network_id,
            "endpoint_id": self.endpoint_id,
            "address": str(self.address),
            "mac": self.mac,
            "joined": self.joined,
            "sandbox": self.sandbox,
            "service": self.service,
            "vip": self.vip,
            **({"address6": str(self.address6)} if self.address6 else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> EndpointSpec:
        return cls(
            network_id=str(d["network_id"]),
            endpoint_id=str(d["endpoint_id"]),
            address=IPv4Interface(str(d["address"])),
            mac=str(d["mac"]),
            joined=bool(d.get("joined", False)),
            sandbox=str(d.get("sandbox") or ""),
            service=str(d.get("service") or ""),
            vip=str(d.get("vip") or ""),
            address6=IPv6Interface(str(d["address6"])) if d.get("address6") else None,
        )


@dataclass(frozen=True)
class Underlay:
    """The host's side of the tunnel: local VTEP address, UDP port, link MTU."""

    address: IPv4Address
    port: int
    mtu: int

    @property
    def overlay_mtu(self) -> int:
        return self.mtu - VXLAN_OVERHEAD
