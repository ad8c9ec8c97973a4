"""PURE cluster-wide address ownership: a subnet is cut into blocks, a host owns blocks.

Why no duplicate address can happen (docs/design.md, "cluster-wide IPAM"):

1. A host hands out an endpoint address only from a block it owns.
2. It owns a block only after a strict majority of the cluster's voters
   granted that block to it.  Voters are all hosts the claimer knows that
   have not left gracefully (alive, suspect *and* dead ones: a host that
   is only unreachable still counts in the denominator).
3. A voter grants a block at most once: it records the grant durably before
   answering, and refuses the same block to anyone else until the holder
   releases it.

Two hosts owning one block would need two majorities of the same voter set
with no voter in common - impossible.  A host that is cut off keeps
allocating from the blocks it already owns (no vote needed); when those are
full, it cannot reach a majority and the error says so.  The limit: voter
sets are each host's view of the membership; adding hosts *while* the
cluster is partitioned can give the two sides different views (as with
Weave's consensus count), so do not add hosts while one is unreachable.

The gateway (the subnet's first host address) is the same on every host and
is never an endpoint address, so it needs no block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

BLOCK_PREFIX = 28  # 16 addresses


def block_prefix(subnet: IPv4Network) -> int:
    return max(subnet.prefixlen, BLOCK_PREFIX)


def block_of(subnet: IPv4Network, ip: IPv4Address) -> IPv4Network:
    return IPv4Network((ip, block_prefix(subnet)), strict=False)


def blocks(subnet: IPv4Network) -> list[IPv4Network]:
    return list(subnet.subnets(new_prefix=block_prefix(subnet)))


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

    def owns(self, subnet: IPv4Network, ip: IPv4Address) -> bool:
        return (str(subnet), str(block_of(subnet, ip))) in self.owned

    def owner_of(self, subnet: IPv4Network, block: IPv4Network) -> str | None:
        key = (str(subnet), str(block))
        if key in self.owned:
            return self.me
        return self.others.get(key)

    def candidates(self, subnet: IPv4Network, full: set[IPv4Network]) -> list[IPv4Network]:
        """Blocks worth claiming: nobody owns them as far as we know, nobody holds a grant."""
        out = []
        for b in blocks(subnet):
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
            "grants": {f"{s} {b}": h for (s, b), h in sorted(self.grants.items())},
        }

    def load(self, d: dict[str, object]) -> None:
        owned = d.get("owned") or []
        grants = d.get("grants") or {}
        assert isinstance(owned, list) and isinstance(grants, dict)
        self.owned = {tuple(str(x).split(" ", 1)) for x in owned}  # type: ignore[misc]
        self.grants = {tuple(str(k).split(" ", 1)): str(v) for k, v in grants.items()}  # type: ignore[misc]
