"""Turn what `docker network create` sent into a NetworkSpec, or say exactly what to fix.

Docker passes `-o key=value` as strings in Options["com.docker.network.generic"].
pyoverlay accepts:

    vni=N                             1..16777215; default: derived from --subnet
    com.docker.network.driver.mtu=N   576..(underlay MTU - 50); default: underlay MTU - 50
                                      (minus 40 more for ESP when encrypted)
    encrypted[=true|false]            IPsec ESP (AES-GCM) between the VTEPs (driver/ipsec.py)
    pyoverlay.vni=N                   (swarm networks) the VNI the leader allocated
                                      (driver.swarm), which every node gets

Anything else is refused, so a typo never silently becomes a default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface
from typing import TypeVar

from pyoverlay.core.errors import InvalidOption
from pyoverlay.core.ip import IPV6_MIN_MTU, V6_SWARM
from pyoverlay.driver.core.model import (
    ESP_OVERHEAD,
    FLAG_TRUE,
    MIN_MTU,
    VNI_MAX,
    VNI_MIN,
    NetworkSpec,
    Underlay,
    derive_vni,
)

N = TypeVar("N", IPv4Network, IPv6Network)
Iface = TypeVar("Iface", IPv4Interface, IPv6Interface)
OPT_VNI = "vni"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ENCRYPTED = "encrypted"
ALLOCATED_VNI = "pyoverlay.vni"  # what AllocateNetwork returns; nodes read it in CreateNetwork
KNOWN_OPTIONS = (OPT_VNI, OPT_MTU, OPT_ENCRYPTED, ALLOCATED_VNI)
ACCEPTED = "-o vni=N, -o com.docker.network.driver.mtu=N and -o encrypted"
FALSE = ("false", "0", "no", "off")


def parse_flag(key: str, value: str) -> bool:
    """`--opt encrypted` arrives as "" (Docker's own overlay takes it the same way)."""
    v = value.strip().lower()
    if v in FLAG_TRUE:
        return True
    if v in FALSE:
        return False
    raise InvalidOption(f"-o {key}={value}: give -o {key} (or ={'|'.join(FLAG_TRUE[1:] + FALSE)})")


@dataclass(frozen=True)
class PoolData:
    """One entry of IPv4Data/IPv6Data as Docker sends it (CIDR strings)."""

    pool: str
    gateway: str = ""
    address_space: str = ""
    aux: tuple[str, ...] = ()  # AuxAddresses values, as Docker sends them (CIDR)


def _int_option(key: str, value: str, low: int, high: int, what: str) -> int:
    try:
        n = int(value.strip(), 10)
    except ValueError:
        raise InvalidOption(
            f"-o {key}={value}: {what} must be a whole number from {low} to {high}"
        ) from None
    if not low <= n <= high:
        raise InvalidOption(f"-o {key}={value}: {what} must be from {low} to {high}")
    return n


def _aux(text: str) -> str:
    try:
        return str(ip_interface(text).ip)
    except ValueError as exc:
        raise InvalidOption(f"--aux-address {text}: {exc}") from None


def parse_network(
    network_id: str,
    generic: Mapping[str, object],
    ipv4: Sequence[PoolData],
    ipv6: Sequence[PoolData],
    enable_ipv6: bool,
    internal: bool,
    underlay: Underlay,
) -> NetworkSpec:
    unknown = sorted(k for k in generic if k not in KNOWN_OPTIONS)
    if unknown:
        shown = ", ".join(f"-o {k}={generic[k]}" for k in unknown)
        raise InvalidOption(
            f"unknown network option{'s' if len(unknown) > 1 else ''} {shown}; "
            f"pyoverlay accepts {ACCEPTED}"
        )
    if any(":" in p.pool for p in ipv4):
        # swarm's leader sends an IPv6 --subnet among the IPv4 ones (swarmkit 20.10)
        raise InvalidOption(f"pyoverlay refuses {V6_SWARM}")
    if len(ipv4) != 1:
        subnets = ", ".join(p.pool for p in ipv4) or "none"
        raise InvalidOption(
            f"a pyoverlay network has exactly one IPv4 subnet, got {len(ipv4)} ({subnets}); "
            "create one network per --subnet"
        )
    subnet, gateway = _subnet_and_gateway(ipv4[0], IPv4Network, IPv4Interface)

    subnet6, gateway6 = _ipv6(ipv6, enable_ipv6)
    opts = {k: str(v) for k, v in generic.items()}
    if subnet6 is not None and ALLOCATED_VNI in opts:
        raise InvalidOption(f"pyoverlay refuses {V6_SWARM}")
    if ALLOCATED_VNI in opts:
        vni = _int_option(
            ALLOCATED_VNI, opts[ALLOCATED_VNI], VNI_MIN, VNI_MAX, "the allocated VXLAN network id"
        )
    elif OPT_VNI in opts:
        vni = _int_option(OPT_VNI, opts[OPT_VNI], VNI_MIN, VNI_MAX, "the VXLAN network id")
    else:
        vni = derive_vni(subnet)
    encrypted = OPT_ENCRYPTED in opts and parse_flag(OPT_ENCRYPTED, opts[OPT_ENCRYPTED])
    max_mtu = underlay.overlay_mtu - (ESP_OVERHEAD if encrypted else 0)
    esp = f" and {ESP_OVERHEAD} of ESP" if encrypted else ""
    if OPT_MTU in opts:
        if max_mtu < MIN_MTU:
            raise InvalidOption(f"the underlay MTU {underlay.mtu} is too small for VXLAN")
        mtu = _int_option(
            OPT_MTU,
            opts[OPT_MTU],
            MIN_MTU,
            max_mtu,
            f"the MTU (at most the underlay's {underlay.mtu} minus 50 bytes of VXLAN header{esp})",
        )
    else:
        mtu = max_mtu
    if subnet6 is not None and mtu < IPV6_MIN_MTU:
        raise InvalidOption(
            f"the network's MTU {mtu} is below IPv6's minimum {IPV6_MIN_MTU}: raise "
            f"-o {OPT_MTU} (or the underlay's MTU), or leave --ipv6 out"
        )
    return NetworkSpec(
        network_id=network_id,
        vni=vni,
        subnet=subnet,
        gateway=gateway,
        mtu=mtu,
        internal=internal,
        options=opts,
        aux=tuple(sorted(_aux(a) for p in (*ipv4, *ipv6) for a in p.aux)),
        subnet6=subnet6,
        gateway6=gateway6,
    )


def _ipv6(
    ipv6: Sequence[PoolData], enable_ipv6: bool
) -> tuple[IPv6Network | None, IPv6Interface | None]:
    """The IPv6 side of a dual-stack network (--ipv6 and one IPv6 --subnet), or none."""
    if not enable_ipv6 and not ipv6:
        return None, None
    if len(ipv6) != 1:
        subnets = ", ".join(p.pool for p in ipv6) or "none"
        raise InvalidOption(
            f"a pyoverlay network with --ipv6 has exactly one IPv6 --subnet, got {len(ipv6)} "
            f"({subnets}); add one, for example --subnet fd00:100::/64"
        )
    return _subnet_and_gateway(ipv6[0], IPv6Network, IPv6Interface)


def _subnet_and_gateway(
    pool: PoolData, network: Callable[..., N], interface: Callable[[str], Iface]
) -> tuple[N, Iface | None]:
    """One family's --subnet and --gateway from Docker's IPAMData, checked."""
    try:
        subnet = network(pool.pool, strict=True)
    except ValueError as exc:
        raise InvalidOption(f"--subnet {pool.pool}: {exc}") from None
    try:
        gateway = interface(pool.gateway) if pool.gateway else None
    except ValueError as exc:
        raise InvalidOption(f"--gateway {pool.gateway}: {exc}") from None
    if gateway is not None and gateway.ip not in subnet:
        raise InvalidOption(f"--gateway {gateway.ip} is outside --subnet {subnet}")
    return subnet, gateway
