"""Addresses of either family, as the IPAM and the driver both handle them (dual stack)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddr = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network
IPV6_MIN_MTU = 1280  # below it the kernel takes IPv6 off a device (RFC 8200)
# why a swarm-scope network cannot be dual stack (docs/research-ipv6.md, section 4)
V6_SWARM = (
    "an IPv6 --subnet on a swarm-scope network: swarm in Docker 20.10 gives each task, VIP "
    "and attached container one address from one of the network's subnets, picked at "
    "random (IPv4 or IPv6, never both), and each node then picks the other family on its "
    "own, so addresses would clash across nodes. Use a --scope local pyoverlay network "
    "with --ipv6 for dual stack, or an IPv4-only swarm network"
)


def addr_key(ip: IPAddr) -> tuple[int, int]:
    """A sort key for mixed families (Python refuses to compare an IPv4 with an IPv6)."""
    return ip.version, int(ip)


def parse_net(text: str, strict: bool = False) -> IPNet:
    return ip_network(text, strict=strict)


def parse_addr(text: str) -> IPAddr:
    return ip_address(text)


def family(version: int) -> str:
    return "IPv6" if version == 6 else "IPv4"
