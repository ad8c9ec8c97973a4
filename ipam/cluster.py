"""ClusterGuard: the IPAM's cluster-wide side - owned blocks, claims by majority vote.

The rules and the argument for "no duplicates" are in blocks.py.  This
module does the talking: a claim asks every reachable voter at once (over
the gossip transport's authenticated request/response streams), counts
grants against a strict majority of all voters, and then announces the
block in the replicated table ("ipam/<subnet>" rows) so others stop
proposing it.  A failed claim releases the grants it got.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol

import structlog

from pyoverlay.state.errors import Conflict, Exhausted

from .blocks import Ownership, block_of, blocks, quorum

log = structlog.get_logger("pyoverlay.ipam")
CLAIM = "ipam-claim"
RELEASE = "ipam-release"
CLAIM_TIMEOUT = 2.0


def scope(subnet: IPv4Network | str) -> str:
    return f"ipam/{subnet}"


class ClaimTransport(Protocol):
    """What the guard needs from the gossip runtime."""

    def voters(self) -> list[tuple[str, str, bool]]:
        """(name, address, reachable) of every member that has not left, this host included."""
        ...

    async def call(
        self, addr: str, kind: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None: ...

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None: ...

    def withdraw(self, scope: str, key: str) -> None: ...

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]: ...


class ClusterGuard:
    clustered = True

    def __init__(self, me: str, transport: ClaimTransport, save: Callable[[], None]) -> None:
        self.me = me
        self.ownership = Ownership(me)
        self.transport = transport
        self.save = save  # persists the IPAM document (which includes ours)
        self.rng = random.Random()

    # -- AddressGuard --------------------------------------------------------

    def _refresh(self, subnet: IPv4Network) -> None:
        for key, value, _ in self.transport.rows(scope(subnet)):
            owner = str(value.get("owner", ""))
            if owner and owner != self.me:
                self.ownership.others[(str(subnet), key)] = owner

    def may_allocate(self, subnet: IPv4Network, ip: IPv4Address) -> bool:
        return self.ownership.owns(subnet, ip)

    async def claim(self, subnet: IPv4Network, want: IPv4Address | None) -> None:
        """Own one more block of `subnet` (the one holding `want`, if given), or raise."""
        self._refresh(subnet)
        if want is not None:
            block = block_of(subnet, want)
            owner = self.ownership.owner_of(subnet, block)
            if owner is not None and owner != self.me:
                raise Conflict(
                    f"address {want} is in block {block}, which pyoverlay host {owner} owns; "
                    "leave --ip out, or pick one from this host's blocks"
                )
            candidates = [block]
        else:
            candidates = self.ownership.candidates(subnet, set())
            self.rng.shuffle(candidates)  # concurrent claimers rarely pick the same block
            if not candidates:
                raise Exhausted(
                    f"every address block of {subnet} is owned by some pyoverlay host; "
                    "use a larger --subnet"
                )
        reason = ""
        for block in candidates[:3]:
            ok, reason = await self._claim_one(subnet, block)
            if ok:
                return
        raise Conflict(
            f"cannot take a new address block of {subnet}: {reason}. This host's own blocks "
            "are full; a new block needs a majority of the pyoverlay hosts "
            "(is this host cut off from the others?)"
        )

    async def _claim_one(self, subnet: IPv4Network, block: IPv4Network) -> tuple[bool, str]:
        s, b = str(subnet), str(block)
        voters = self.transport.voters()
        need = quorum(len(voters))
        if not self.ownership.vote(s, b, self.me):
            return False, f"block {b} is promised to another host"
        self.save()
        body = {"subnet": s, "block": b, "claimer": self.me}
        others = [(n, a) for n, a, reachable in voters if n != self.me and reachable]
        replies = await asyncio.gather(
            *(self.transport.call(a, CLAIM, body, CLAIM_TIMEOUT) for _, a in others)
        )
        granted = [a for (_, a), r in zip(others, replies, strict=True) if r and r.get("granted")]
        votes = 1 + len(granted)
        if votes >= need:
            self.ownership.owned.add((s, b))
            self.save()
            self.transport.publish(scope(subnet), b, {"owner": self.me})
            log.info("address block claimed", pool=s, block=b, votes=votes, voters=len(voters))
            return True, ""
        self.ownership.release(s, b, self.me)
        self.save()
        await asyncio.gather(
            *(self.transport.call(a, RELEASE, body, CLAIM_TIMEOUT) for a in granted)
        )
        answered = sum(1 for r in replies if r is not None)
        return False, (
            f"{votes} of {len(voters)} hosts granted block {b} ({answered} of "
            f"{len(voters) - 1} others answered), {need} are needed"
        )

    async def release_subnet(self, subnet: IPv4Network) -> None:
        """This host no longer uses `subnet` (ReleasePool): give its blocks back.

        The voters' grants are released too (best effort: a voter that does not
        answer keeps the block promised to us, which wastes it but is safe).
        """
        s = str(subnet)
        released = [k for k in self.ownership.owned if k[0] == s]
        for key in released:
            self.ownership.owned.discard(key)
            self.ownership.grants.pop(key, None)
            self.transport.withdraw(scope(subnet), key[1])
        others = [a for n, a, reachable in self.transport.voters() if n != self.me and reachable]
        await asyncio.gather(
            *(
                self.transport.call(
                    a, RELEASE, {"subnet": s, "block": b, "claimer": self.me}, CLAIM_TIMEOUT
                )
                for _, b in released
                for a in others
            )
        )

    # -- RPC handlers (must not block) ------------------------------------------

    def handle_claim(self, body: dict[str, Any]) -> dict[str, Any]:
        s, b, claimer = str(body.get("subnet")), str(body.get("block")), str(body.get("claimer"))
        try:
            net = IPv4Network(s)
            if IPv4Network(b) not in blocks(net):
                return {"granted": False}
            self._refresh(net)
        except ValueError:
            return {"granted": False}
        granted = self.ownership.vote(s, b, claimer)
        if granted:
            self.save()  # durable before we answer
        return {"granted": granted}

    def handle_release(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ownership.release(
            str(body.get("subnet")), str(body.get("block")), str(body.get("claimer"))
        )
        self.save()
        return {}

    def to_json(self) -> dict[str, object]:
        return self.ownership.to_json()

    def load(self, d: dict[str, object]) -> None:
        self.ownership.load(d)
