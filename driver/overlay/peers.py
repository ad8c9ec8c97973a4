"""PURE: remote endpoints (from the gossip table) -> the FDB/ARP entries a VTEP needs.

Every remote endpoint of a VNI becomes, on that network's VTEP:
    bridge fdb replace <mac> dev <vtep> dst <remote host> self permanent
    ip neigh replace <ip> lladdr <mac> dev <vtep> nud permanent
(flannel's "program ahead, no miss upcalls" design; the VTEP's `proxy` flag
answers containers' ARP from the neighbour table).

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
from ipaddress import IPv4Address
from typing import Any

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
            )
        except (KeyError, ValueError):
            return None


def row_value(
    ip: IPv4Address, mac: str, vtep: IPv4Address, service: str = "", vip: str = ""
) -> dict[str, Any]:
    """An endpoint's row; a swarm task's row also names its service and VIP (vips.py)."""
    row = {"ip": str(ip), "mac": mac, "vtep": str(vtep)}
    if service and vip:
        row |= {"service": service, "vip": vip}
    return row


def desired(remotes: Iterable[RemoteEndpoint], local_vtep: IPv4Address) -> PeerEntries:
    fdb: dict[str, tuple[tuple[int, str], IPv4Address]] = {}
    neigh: dict[IPv4Address, tuple[tuple[int, str], str]] = {}
    for r in remotes:
        if r.vtep == local_vtep:
            continue  # our own endpoints sit on br0; nothing to tunnel
        if r.mac not in fdb or fdb[r.mac][0] < r.version:
            fdb[r.mac] = (r.version, r.vtep)
        if r.ip not in neigh or neigh[r.ip][0] < r.version:
            neigh[r.ip] = (r.version, r.mac)
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
        ip
        for ip, mac in have.neigh.items()
        if ip not in want.neigh and removable(have.fdb.get(mac))
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
    for ip, mac in sorted((i, m) for i, m in want.neigh.items() if have.neigh.get(i) != m):
        ops.append(ReplaceNeigh(ns, dev, ip, mac))
    return ops
