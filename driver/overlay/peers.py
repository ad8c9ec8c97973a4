"""PURE: remote endpoints (from the gossip table) -> the FDB/ARP entries a VTEP needs.

Every remote endpoint of a VNI becomes, on that network's VTEP:
    bridge fdb replace <mac> dev <vtep> dst <remote host> self permanent
    ip neigh replace <ip> lladdr <mac> dev <vtep> nud permanent
    ip -6 neigh replace <ip6> lladdr <mac> dev <vtep> nud permanent   (dual stack)
(flannel's "program ahead, no miss upcalls" design; the VTEP's `proxy` flag
answers containers' ARP, and their IPv6 neighbour solicitations, from the
neighbour table: the same MAC and FDB entry serve both families).

This is state-based, not event-based: the wanted entries are recomputed from
the table and diffed with what the kernel has, so any interleaving or
duplication of add/delete events ends in the same kernel state, and drift
(an entry deleted by hand, a lost event) is repaired the same way.

Two rows claiming one IP (an address reused before the old owner's delete
arrived, moby#33789) or one MAC are resolved by the newest row version.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pyoverlay.core.ip import IPAddr, addr_key
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.ops import DeleteFdb, DeleteNeigh, PeerOp, ReplaceFdb, ReplaceNeigh

PEER_TABLE = "peer"


def scope(vni: int) -> str:
    return f"{PEER_TABLE}/{vni}"


@dataclass(frozen=True)
class RemoteEndpoint:
    endpoint_id: str
    ip: IPv4Address
    mac: str
    vtep: IPv4Address
    version: tuple[int, str]
    ip6: IPv6Address | None = None  # on a dual-stack network

    @classmethod
    def from_row(
        cls, key: str, value: dict[str, Any], version: tuple[int, str]
    ) -> RemoteEndpoint | None:
        try:
            return cls(
                key,
                IPv4Address(str(value["ip"])),
                str(value["mac"]).lower(),
                IPv4Address(str(value["vtep"])),
                version,
                IPv6Address(str(value["ip6"])) if value.get("ip6") else None,
            )
        except (KeyError, ValueError):
            return None


def row_value(
    ip: IPv4Address,
    mac: str,
    vtep: IPv4Address,
    service: str = "",
    vip: str = "",
    ip6: IPv6Address | None = None,
) -> dict[str, Any]:
    """An endpoint's row; a swarm task's row also names its service and VIP (vips.py), a
    dual-stack endpoint's its IPv6 address."""
    row = {"ip": str(ip), "mac": mac, "vtep": str(vtep)}
    if ip6 is not None:
        row["ip6"] = str(ip6)
    if service and vip:
        row |= {"service": service, "vip": vip}
    return row


def desired(remotes: Iterable[RemoteEndpoint], local_vtep: IPv4Address) -> PeerEntries:
    fdb: dict[str, tuple[tuple[int, str], IPv4Address]] = {}
    neigh: dict[IPAddr, tuple[tuple[int, str], str]] = {}
    for r in remotes:
        if r.vtep == local_vtep:
            continue  # our own endpoints sit on br0; nothing to tunnel
        if r.mac not in fdb or fdb[r.mac][0] < r.version:
            fdb[r.mac] = (r.version, r.vtep)
        for ip in (r.ip, r.ip6) if r.ip6 is not None else (r.ip,):
            if ip not in neigh or neigh[ip][0] < r.version:
                neigh[ip] = (r.version, r.mac)
    return PeerEntries(
        fdb={m: v for m, (_, v) in fdb.items()}, neigh={i: m for i, (_, m) in neigh.items()}
    )


def diff(
    ns: str,
    dev: str,
    have: PeerEntries,
    want: PeerEntries,
    prune: bool = True,
    keep: Collection[IPv4Address] = (),
) -> list[PeerOp]:
    """Ops that turn `have` into `want`.

    With prune=False nothing is deleted that `want` does not replace: a
    restarting plugin whose table is still empty (gossip has not synced yet)
    must not remove the entries running containers use (issue: restart
    without loss).  Entries that `want` changes are still fixed.  Entries
    towards a VTEP in `keep` (a host whose plugin is silent but whose kernel
    answers: its containers still run) are not removed either.
    """
    # only what differs is sorted (a sync that changes nothing costs no sort of 5,000 entries)
    ops: list[PeerOp] = []

    def removable(dst: IPv4Address | None) -> bool:
        return prune and dst not in keep

    for ip in sorted(
        (
            ip
            for ip, mac in have.neigh.items()
            if ip not in want.neigh and removable(have.fdb.get(mac))
        ),
        key=addr_key,
    ):
        ops.append(DeleteNeigh(ns, dev, ip))
    for mac, dst in sorted(
        (m, d)
        for m, d in have.fdb.items()
        if want.fdb.get(m) != d and (removable(d) or m in want.fdb)
    ):
        ops.append(DeleteFdb(ns, dev, mac, dst))
    for mac, dst in sorted((m, d) for m, d in want.fdb.items() if have.fdb.get(m) != d):
        ops.append(ReplaceFdb(ns, dev, mac, dst))
    for ip, mac in sorted(
        ((i, m) for i, m in want.neigh.items() if have.neigh.get(i) != m),
        key=lambda im: addr_key(im[0]),
    ):
        ops.append(ReplaceNeigh(ns, dev, ip, mac))
    return ops
