"""PURE: what makes two hosts' networks "the same overlay", and where they disagree.

In local (non-swarm) mode every host creates the network itself, and the VNI
is what joins them: two networks with one VNI share one L2 segment.  So a
VNI must mean one network spec on every host.  Each host publishes the spec
of every network it has in the gossip table (scope `net/<vni>`, one row per
host), and:

* CreateNetwork is refused when another host already has that VNI with a
  different spec (another subnet: a derived-VNI collision or a reused
  `-o vni`; or the same subnet with other options), naming the host and the
  difference;
* disagreements that arise anyway (two hosts creating at the same moment)
  are reported by `pyoverlay status` and logged.

In a cluster, a network's identity must come from the user, never from a
per-host default: with pyoverlay's IPAM `--subnet` is required (refused at
RequestPool otherwise); with another IPAM driver (whose subnet may be
auto-picked per host) `-o vni=N` is required.
"""

from __future__ import annotations

from typing import Any

from pyoverlay.driver.core.model import NetworkSpec

NET_TABLE = "net"
OWN_SPACE_PREFIX = "pyoverlay-"  # address spaces of pyoverlay's IPAM (ipam.service)
FIELDS = ("subnet", "mtu", "internal", "gateway", "aux", "subnet6", "gateway6")


def scope(vni: int) -> str:
    return f"{NET_TABLE}/{vni}"


def record(net: NetworkSpec) -> dict[str, Any]:
    """The part of a network's spec every host must agree on. The IPv6 side only when
    there is one: an IPv4-only network's row is as an older plugin writes it, and a host
    that left out --ipv6 (or gave another IPv6 subnet) on a dual-stack network differs."""
    out: dict[str, Any] = {
        "subnet": str(net.subnet),
        "mtu": net.mtu,
        "internal": net.internal,
        "gateway": str(net.gateway.ip) if net.gateway else "",
        "aux": sorted(net.aux),
    }
    if net.subnet6 is not None:
        out["subnet6"] = str(net.subnet6)
        out["gateway6"] = str(net.gateway6.ip) if net.gateway6 else ""
    return out


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. ["mtu 1450 here, 1400 there"]."""
    out = []
    for f in FIELDS:
        a, b = mine.get(f), theirs.get(f)
        if a != b:
            out.append(f"{f} {_show(a)} here, {_show(b)} there")
    return out


def _show(v: object) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "none"
    if v == "" or v is None:
        return "none"
    return str(v)


def disagreements(
    net: NetworkSpec, rows: list[tuple[str, dict[str, Any]]], me: str
) -> dict[str, list[str]]:
    """host -> differences, for every other host whose row for this VNI differs."""
    mine = record(net)
    out = {}
    for host, theirs in rows:
        if host == me:
            continue
        diff = differences(mine, theirs)
        if diff:
            out[host] = diff
    return out


def needs_identity(net: NetworkSpec, address_space: str) -> str | None:
    """In a cluster: why this network's identity is not the user's, or None if it is."""
    if net.swarm or "vni" in net.options or address_space.startswith(OWN_SPACE_PREFIX):
        return None
    return (
        f"in a pyoverlay cluster the VNI names the network on every host, and subnet "
        f"{net.subnet} may have been picked by this host's IPAM driver ({address_space or '?'}) "
        "on its own; use --ipam-driver pyoverlay with --subnet, or give -o vni=N "
        "(the same on every host that means this network)"
    )
