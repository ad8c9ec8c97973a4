"""Pure address allocation inside one pool (CNI host-local's shape).

Addresses are handed out round-robin from a cursor (the last one given),
not lowest-first, so a just-released address is not immediately reused: a
remote host may still hold an ARP/FDB entry for it (moby#33789).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyoverlay.core.errors import Conflict, Exhausted, InvalidOption

GATEWAY = "gateway"
ENDPOINT = "endpoint"
RESERVED = "reserved"  # --aux-address: a reservation of the network, the same on every host
LENT = "lent:"  # + node id: an address of our block another host uses (--ip there)


@dataclass
class Pool:
    pool_id: str
    subnet: IPv4Network
    ip_range: IPv4Network | None = None
    allocated: dict[IPv4Address, str] = field(default_factory=dict)
    cursor: IPv4Address | None = None
    # False between RequestPool and the network's CreateNetwork: addresses asked
    # for then are the network's own (--gateway, --aux-address), not claims.
    live: bool = True
    # swarm: "leader" (the swarm leader's allocator asks here: its raft store is the truth,
    # so no cluster-wide claims), or "node" (a node running a task records the address
    # the leader chose); "": a pyoverlay network of standalone engines
    swarm: str = ""

    def usable(self, ip: IPv4Address) -> bool:
        """Inside the subnet and neither its network nor broadcast address."""
        if ip not in self.subnet:
            return False
        if self.subnet.prefixlen >= 31:
            return True
        return ip not in (self.subnet.network_address, self.subnet.broadcast_address)

    def to_json(self) -> dict[str, object]:
        return {
            "pool_id": self.pool_id,
            "subnet": str(self.subnet),
            "ip_range": str(self.ip_range) if self.ip_range else None,
            "allocated": {str(k): v for k, v in sorted(self.allocated.items())},
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
            subnet=IPv4Network(str(d["subnet"])),
            ip_range=IPv4Network(str(d["ip_range"])) if d.get("ip_range") else None,
            allocated={IPv4Address(k): str(v) for k, v in alloc.items()},
            cursor=IPv4Address(str(d["cursor"])) if d.get("cursor") else None,
            live=bool(d.get("live", True)),
            swarm=str(d.get("swarm") or ""),
        )


def first_host(subnet: IPv4Network) -> IPv4Address:
    if subnet.prefixlen >= 31:
        return subnet.network_address
    return subnet.network_address + 1


def claim(pool: Pool, ip: IPv4Address, purpose: str) -> IPv4Address:
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
    pool: Pool, purpose: str, allowed: Callable[[IPv4Address], bool] = lambda _: True
) -> IPv4Address:
    """The next usable, unallocated, allowed address after the cursor (wrapping around)."""
    span = pool.ip_range or pool.subnet
    first = int(span.network_address)
    size = span.num_addresses
    start = 0
    if pool.cursor is not None and pool.cursor in span:
        start = int(pool.cursor) - first + 1
    for i in range(size):
        ip = IPv4Address(first + (start + i) % size)
        if pool.usable(ip) and ip not in pool.allocated and allowed(ip):
            pool.allocated[ip] = purpose
            pool.cursor = ip
            return ip
    where = f"range {pool.ip_range} of " if pool.ip_range else ""
    raise Exhausted(
        f"no free address left in {where}{pool.subnet} ({len(pool.allocated)} in use); "
        "remove unused containers or use a larger --subnet/--ip-range"
    )


def release(pool: Pool, ip: IPv4Address) -> bool:
    return pool.allocated.pop(ip, None) is not None
