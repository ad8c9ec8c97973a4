"""PURE cluster-wide address ownership: a subnet is cut into blocks, a host owns blocks.

Why no duplicate address can happen (docs/design.md, "cluster-wide IPAM"):

1. A host hands out an endpoint address only from a block it owns.
2. It owns a block only after a strict majority of the cluster's voters
   granted that block to it.  Voters are a persisted, monotonic set: every
   host this host ever saw as a member (alive, suspect *and* dead ones: a
   host that is only unreachable still counts in the denominator), minus
   hosts that left gracefully or were removed with `pyoverlay forget`.
   Every voter answers with its own voter set, and the claimer counts
   against the union, so a voter set learnt late still raises the bar.
3. A voter grants a block at most once: it records the grant durably before
   answering, and refuses the same block to anyone else until the holder
   releases it.

Two hosts owning one block would need two majorities of the same voter set
with no voter in common - impossible.  A host that is cut off keeps
allocating from the blocks it already owns (no vote needed); when those are
full, it cannot reach a majority and the error says so.  A host serves
claims only after its first sync with the cluster (so a host whose --join
target is unreachable never counts itself as a majority of one).

Single addresses (`--ip`) in a block another host owns are lent by that
owner: it reserves the address in its pool (durably, before answering) and
the borrower uses it; the owner is the only host that allocates from its
block, so its consent is all that is needed.  The gateway and
`--aux-address`es are reservations of the network, the same on every host,
never claims.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_network

from pyoverlay.core.ip import IPAddr, IPNet

BLOCK_PREFIX = 28  # IPv4: 16 addresses
# IPv6: 256 addresses. A /64 has 2**56 such blocks, so they are never listed, only walked
# from the start (`candidates` stops after CANDIDATES free ones); 256 keeps a host's first
# block as small as an IPv4 /24 while a busy host still claims rarely.
BLOCK_PREFIX6 = 120
CANDIDATES = 64  # free blocks looked at per claim (concurrent claimers pick among them)


def block_prefix(subnet: IPNet) -> int:
    return max(subnet.prefixlen, BLOCK_PREFIX if subnet.version == 4 else BLOCK_PREFIX6)


def block_of(subnet: IPNet, ip: IPAddr) -> IPNet:
    return ip_network((ip, block_prefix(subnet)), strict=False)


def blocks(subnet: IPNet) -> Iterator[IPNet]:
    """Every block of `subnet`, in address order (lazily: an IPv6 /64 has 2**56)."""
    return subnet.subnets(new_prefix=block_prefix(subnet))


def is_block(subnet: IPNet, text: str) -> bool:
    """`text` names one of `subnet`'s blocks."""
    try:
        block = ip_network(text)
    except ValueError:
        return False
    return (
        block.version == subnet.version
        and block.prefixlen == block_prefix(subnet)
        and block.subnet_of(subnet)  # type: ignore[arg-type]
    )


def quorum(voters: int) -> int:
    """Strict majority."""
    return voters // 2 + 1


@dataclass
class Ownership:
    """One host's view: blocks it owns, blocks it knows others own, grants it gave."""

    me: str
    owned: set[tuple[str, str]] = field(default_factory=set)  # (subnet, block)
    others: dict[tuple[str, str], str] = field(default_factory=dict)  # from the table
    grants: dict[tuple[str, str], str] = field(default_factory=dict)  # (subnet, block) -> holder
    voters: set[str] = field(default_factory=set)  # monotonic, persisted (minus left/forgotten)
    forgotten: set[str] = field(default_factory=set)  # removed for good: never a voter again
    lent: dict[tuple[str, str], str] = field(default_factory=dict)  # (subnet, ip) -> borrower
    borrowed: dict[tuple[str, str], str] = field(default_factory=dict)  # (subnet, ip) -> owner

    def owns(self, subnet: IPNet, ip: IPAddr) -> bool:
        if (str(subnet), str(ip)) in self.borrowed:
            return True
        if (str(subnet), str(ip)) in self.lent:
            return False
        return (str(subnet), str(block_of(subnet, ip))) in self.owned

    def learn_voters(self, names: set[str]) -> bool:
        """Add hosts to the voter set (never the forgotten); True if it grew."""
        new = names - self.voters - self.forgotten
        self.voters |= new
        return bool(new)

    def drop_voter(self, name: str, forget: bool) -> None:
        """A host left gracefully (or is forgotten): it votes no more; if forgotten, the
        blocks it owned and the grants it held go back to the pool."""
        self.voters.discard(name)
        if not forget:
            return
        self.forgotten.add(name)
        for k in [k for k, v in self.others.items() if v == name]:
            del self.others[k]
        for k in [k for k, v in self.grants.items() if v == name]:
            del self.grants[k]

    def owner_of(self, subnet: IPNet, block: IPNet) -> str | None:
        key = (str(subnet), str(block))
        if key in self.owned:
            return self.me
        return self.others.get(key)

    def owned_blocks(self, subnet: IPNet) -> list[IPNet]:
        """The blocks of `subnet` this host owns, in address order."""
        s = str(subnet)
        mine = [ip_network(b) for n, b in self.owned if n == s]
        return sorted(mine, key=lambda b: int(b.network_address))

    def candidates(
        self, subnet: IPNet, full: set[IPNet], within: IPNet | None = None
    ) -> list[IPNet]:
        """Blocks worth claiming (the first CANDIDATES, in address order, inside `within`
        if given): nobody owns them as far as we know, nobody holds a grant."""
        out: list[IPNet] = []
        walk: Iterator[IPNet] = blocks(subnet)
        if within is not None and within.version == subnet.version:
            if within.prefixlen >= block_prefix(subnet):  # a range inside one block
                walk = iter([block_of(subnet, within.network_address)])
            else:
                walk = within.subnets(new_prefix=block_prefix(subnet))
        for b in itertools.islice(walk, 1 << 20):  # a bound, for a subnet owned all over
            if len(out) >= CANDIDATES:
                break
            key = (str(subnet), str(b))
            if b in full or key in self.owned or key in self.others:
                continue
            holder = self.grants.get(key)
            if holder is not None and holder != self.me:
                continue
            out.append(b)
        return out

    def vote(self, subnet: str, block: str, claimer: str) -> bool:
        """A claim arrives: grant it unless the block is promised or known owned elsewhere."""
        key = (subnet, block)
        owner = self.me if key in self.owned else self.others.get(key)
        if owner is not None and owner != claimer:
            return False
        holder = self.grants.get(key)
        if holder is not None and holder != claimer:
            return False
        self.grants[key] = claimer
        return True

    def release(self, subnet: str, block: str, claimer: str) -> None:
        if self.grants.get((subnet, block)) == claimer:
            del self.grants[(subnet, block)]
        if self.others.get((subnet, block)) == claimer:
            del self.others[(subnet, block)]

    def to_json(self) -> dict[str, object]:
        return {
            "owned": sorted(f"{s} {b}" for s, b in self.owned),
            "grants": _pairs(self.grants),
            "voters": sorted(self.voters),
            "forgotten": sorted(self.forgotten),
            "lent": _pairs(self.lent),
            "borrowed": _pairs(self.borrowed),
        }

    def load(self, d: dict[str, object]) -> None:
        owned = d.get("owned") or []
        assert isinstance(owned, list)
        self.owned = {_key(x) for x in owned}
        self.grants = _unpairs(d.get("grants"))
        self.voters = {str(x) for x in _seq(d.get("voters"))}
        self.forgotten = {str(x) for x in _seq(d.get("forgotten"))}
        self.lent = _unpairs(d.get("lent"))
        self.borrowed = _unpairs(d.get("borrowed"))


def _key(text: object) -> tuple[str, str]:
    a, _, b = str(text).partition(" ")
    return a, b


def _seq(v: object) -> list[object]:
    return list(v) if isinstance(v, list) else []


def _pairs(d: dict[tuple[str, str], str]) -> dict[str, str]:
    return {f"{s} {b}": h for (s, b), h in sorted(d.items())}


def _unpairs(v: object) -> dict[tuple[str, str], str]:
    return {_key(k): str(x) for k, x in v.items()} if isinstance(v, dict) else {}
