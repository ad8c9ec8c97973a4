"""Pure address allocation inside one pool (CNI host-local's shape).

Addresses are handed out round-robin from a cursor (the last one given),
not lowest-first, so a just-released address is not immediately reused: a
remote host may still hold an ARP/FDB entry for it (moby#33789).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from pyoverlay.core.errors import Conflict, Exhausted, InvalidOption
from pyoverlay.core.ip import IPAddr, IPNet

GATEWAY = "gateway"
ENDPOINT = "endpoint"
RESERVED = "reserved"  # --aux-address: a reservation of the network, the same on every host
LENT = "lent:"  # + node id: an address of our block another host uses (--ip there)


@dataclass
class Pool:
    pool_id: str
    subnet: IPNet
    ip_range: IPNet | None = None
    allocated: dict[IPAddr, str] = field(default_factory=dict)
    cursor: IPAddr | None = None
    # False between RequestPool and the network's CreateNetwork: addresses asked
    # for then are the network's own (--gateway, --aux-address), not claims.
    live: bool = True
    # swarm: "leader" (the swarm leader's allocator asks here: its raft store is the truth,
    # so no cluster-wide claims), or "node" (a node running a task records the address
    # the leader chose); "": a pyoverlay network of standalone engines
    swarm: str = ""

    def usable(self, ip: IPAddr) -> bool:
        """Inside the subnet and neither its network nor broadcast address (IPv6: neither
        the subnet-router anycast address nor the last one, as Docker's IPAM)."""
        if ip not in self.subnet:
            return False
        if self.subnet.num_addresses <= 2:
            return True
        return ip not in (self.subnet.network_address, self.subnet.broadcast_address)

    def to_json(self) -> dict[str, object]:
        return {
            "pool_id": self.pool_id,
            "subnet": str(self.subnet),
            "ip_range": str(self.ip_range) if self.ip_range else None,
            "allocated": {
                str(k): v for k, v in sorted(self.allocated.items(), key=lambda kv: int(kv[0]))
            },
            "cursor": str(self.cursor) if self.cursor else None,
            "live": self.live,
            **({"swarm": self.swarm} if self.swarm else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Pool:
        alloc = d.get("allocated") or {}
        assert isinstance(alloc, dict)
        return cls(
            pool_id=str(d["pool_id"]),
            subnet=ip_network(str(d["subnet"])),
            ip_range=ip_network(str(d["ip_range"])) if d.get("ip_range") else None,
            allocated={ip_address(k): str(v) for k, v in alloc.items()},
            cursor=ip_address(str(d["cursor"])) if d.get("cursor") else None,
            live=bool(d.get("live", True)),
            swarm=str(d.get("swarm") or ""),
        )


def first_host(subnet: IPNet) -> IPAddr:
    if subnet.num_addresses <= 2:
        return subnet.network_address
    return subnet.network_address + 1


def claim(pool: Pool, ip: IPAddr, purpose: str) -> IPAddr:
    """Take a specific address (--ip, --gateway, --aux-address)."""
    if not pool.usable(ip):
        what = "network or broadcast address of" if ip in pool.subnet else "outside"
        raise InvalidOption(f"address {ip} is the {what} subnet {pool.subnet}; pick another")
    holder = pool.allocated.get(ip)
    if holder is not None:
        raise Conflict(
            f"address {ip} is already in use ({holder}) in {pool.subnet}; "
            "pick another --ip or leave it out to get the next free one"
        )
    pool.allocated[ip] = purpose
    return ip


def next_free(
    pool: Pool,
    purpose: str,
    allowed: Callable[[IPAddr], bool] = lambda _: True,
    spans: Sequence[IPNet] | None = None,
) -> IPAddr:
    """The next usable, unallocated, allowed address after the cursor (wrapping around),
    looked for only in `spans` (the blocks this host owns; None: the whole pool)."""
    parts = _parts(pool.ip_range or pool.subnet, spans)
    first, offset = 0, 0  # where the walk starts: just after the cursor
    if pool.cursor is not None:
        for k, part in enumerate(parts):
            if pool.cursor in part:
                first, offset = k, int(pool.cursor) - int(part.network_address) + 1
                break
    n = len(parts)
    for lap in range(n + 1 if n else 0):  # every part once, the first one's head last
        part = parts[(first + lap) % n]
        low = offset if lap == 0 else 0
        high = offset if lap == n else part.num_addresses
        for i in range(low, high):
            ip = part.network_address + i
            if pool.usable(ip) and ip not in pool.allocated and allowed(ip):
                pool.allocated[ip] = purpose
                pool.cursor = ip
                return ip
    where = f"range {pool.ip_range} of " if pool.ip_range else ""
    raise Exhausted(
        f"no free address left in {where}{pool.subnet} ({len(pool.allocated)} in use); "
        "remove unused containers or use a larger --subnet/--ip-range"
    )


def _parts(span: IPNet, spans: Sequence[IPNet] | None) -> list[IPNet]:
    """`span` cut down to `spans` (CIDR blocks: one holds the other, or they are apart)."""
    if spans is None:
        return [span]
    out: list[IPNet] = []
    for s in spans:
        if s.version != span.version or not s.overlaps(span):
            continue
        out.append(s if s.prefixlen >= span.prefixlen else span)
    return sorted(set(out), key=lambda n: int(n.network_address))


def release(pool: Pool, ip: IPAddr) -> bool:
    return pool.allocated.pop(ip, None) is not None
