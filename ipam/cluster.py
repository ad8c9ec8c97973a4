"""ClusterGuard: the IPAM's cluster-wide side - owned blocks, claims by majority vote.

(~400 lines: the three sides of one protocol, claiming, lending and forgetting, each
with the RPC handler that answers it on the other hosts, read best side by side.)

The rules and the argument for "no duplicates" are in blocks.py.  This
module does the talking: a claim asks every reachable voter at once (over
the gossip transport's authenticated request/response streams), counts
grants against a strict majority of the union of the voter sets (ours,
persisted, and every voter's answer), and then announces the block in the
replicated table ("ipam/<subnet>" rows) so others stop proposing it.  A
failed claim releases the grants it got.

Also here: single-address loans (`--ip` in another host's block), and
`forget` (a dead host removed for good, its blocks back to the pool once a
majority agreed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from ipaddress import ip_address, ip_network
from typing import Any, Protocol

import structlog

from pyoverlay.core.errors import Conflict, Exhausted, InvalidOption
from pyoverlay.core.ip import IPAddr, IPNet
from pyoverlay.ipam.blocks import Ownership, block_of, is_block, quorum

log = structlog.get_logger("pyoverlay.ipam")
CLAIM = "ipam-claim"
RELEASE = "ipam-release"
LEND = "ipam-lend"
RETURN = "ipam-return"
FORGET = "ipam-forget"
SYNC_WAIT = 5.0  # seconds a claim waits for the first sync with the cluster
CLAIM_TIMEOUT = 2.0
LIVE = ("alive", "suspect")


def scope(subnet: IPNet | str) -> str:
    return f"ipam/{subnet}"


class ClaimTransport(Protocol):
    """What the guard needs from the gossip runtime."""

    def members(self) -> list[tuple[str, str, str]]:
        """(name, address, status) of every member the gossip knows, this host included."""
        ...

    async def call(
        self, addr: str, kind: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None: ...

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None: ...

    def withdraw(self, scope: str, key: str) -> None: ...

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]: ...


LendHook = Callable[[IPNet, IPAddr, str], str | None]


class ClusterGuard:
    clustered = True

    def __init__(
        self,
        me: str,
        transport: ClaimTransport,
        save: Callable[[], None],
        save_async: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.me = me
        self.ownership = Ownership(me)
        self.transport = transport
        self.save = save  # persists the IPAM document (which includes ours)
        self.save_async = save_async or self._save_now  # the same, off the event loop
        self.rng = random.Random()
        self._synced = asyncio.Event()  # claims only after the first sync with the cluster
        # set by the IPAM service: reserve/free an address in our pool for a borrower
        self.lend_hook: LendHook = lambda subnet, ip, who: "no pool"
        self.unlend_hook: Callable[[IPNet, IPAddr, str], None] = lambda s, i, w: None

    # -- voters ----------------------------------------------------------------

    def voters(self) -> list[tuple[str, str, bool]]:
        """(name, address, reachable) of the persisted voter set, after learning from gossip."""
        o = self.ownership
        members = self.transport.members()
        changed = o.learn_voters({self.me} | {n for n, _, st in members if st != "left"})
        for name, _, status in members:
            if status == "left" and name in o.voters:
                o.drop_voter(name, forget=False)
                changed = True
        if changed:
            self.save()
        where = {n: (a, st in LIVE) for n, a, st in members}
        return [
            (n, *where.get(n, ("", False))) if n != self.me else (n, "", True)
            for n in sorted(o.voters)
        ]

    # -- AddressGuard --------------------------------------------------------

    def _refresh(self, subnet: IPNet) -> None:
        for key, value, _ in self.transport.rows(scope(subnet)):
            owner = str(value.get("owner", ""))
            if owner and owner != self.me and owner not in self.ownership.forgotten:
                self.ownership.others[(str(subnet), key)] = owner

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @synced.setter
    def synced(self, value: bool) -> None:
        if value:
            self._synced.set()
        else:
            self._synced.clear()

    def may_allocate(self, subnet: IPNet, ip: IPAddr) -> bool:
        return self.ownership.owns(subnet, ip)

    def spans(self, subnet: IPNet) -> list[IPNet] | None:
        """Where this host allocates from: the blocks it owns."""
        return self.ownership.owned_blocks(subnet)

    def _not_synced(self) -> Conflict:
        return Conflict(
            "this host has not synced with the pyoverlay cluster yet, so it cannot take a new "
            "address block (it allocates only from blocks it already owns until then); check "
            "`pyoverlay members` and that --join reaches a live host, then retry"
        )

    async def claim(self, subnet: IPNet, want: IPAddr | None, within: IPNet | None = None) -> None:
        """Own one more block of `subnet` (inside `within`, the --ip-range), or borrow
        `want` from its owner; or raise why not."""
        if not self.synced:
            # a `docker run` right after the plugin started (a boot, a script): wait for
            # the first sync a little, rather than refuse what a second later works
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), SYNC_WAIT)
            if not self.synced:
                raise self._not_synced()
        self._refresh(subnet)
        if want is not None:
            block = block_of(subnet, want)
            # the owner as the table says, or as our own grant says (the table may lag)
            owner = self.ownership.owner_of(subnet, block) or self.ownership.grants.get(
                (str(subnet), str(block))
            )
            if owner is not None and owner != self.me:
                await self._borrow(subnet, want, owner)
                return
            candidates = [block]
        else:
            candidates = self.ownership.candidates(subnet, set(), within)
            self.rng.shuffle(candidates)  # concurrent claimers rarely pick the same block
            if not candidates:
                raise Exhausted(
                    f"every address block of {subnet} is owned by some pyoverlay host; "
                    "use a larger --subnet (or `pyoverlay forget` hosts that are gone for good)"
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

    async def _claim_one(self, subnet: IPNet, block: IPNet) -> tuple[bool, str]:
        s, b = str(subnet), str(block)
        voters = self.voters()
        if not self.ownership.vote(s, b, self.me):
            return False, f"block {b} is promised to another host"
        self.save()
        body = {"subnet": s, "block": b, "claimer": self.me}
        others = [(n, a) for n, a, reachable in voters if n != self.me and reachable]
        replies = await asyncio.gather(
            *(self.transport.call(a, CLAIM, body, CLAIM_TIMEOUT) for _, a in others)
        )
        granted = [a for (_, a), r in zip(others, replies, strict=True) if r and r.get("granted")]
        # every voter's own voter set counts too: a host it knows and we do not raises the bar
        learnt: set[str] = set()
        for r in replies:
            if r and isinstance(r.get("voters"), list):
                learnt |= {str(v) for v in r["voters"]}
        if self.ownership.learn_voters(learnt):
            self.save()
        total = len(self.ownership.voters)
        need = quorum(total)
        votes = 1 + len(granted)
        if votes >= need:
            self.ownership.owned.add((s, b))
            self.save()
            self.transport.publish(scope(subnet), b, {"owner": self.me})
            log.info("address block claimed", pool=s, block=b, votes=votes, voters=total)
            return True, ""
        self.ownership.release(s, b, self.me)
        self.save()
        await asyncio.gather(
            *(self.transport.call(a, RELEASE, body, CLAIM_TIMEOUT) for a in granted)
        )
        answered = sum(1 for r in replies if r is not None)
        why = (
            f"{votes} of {total} hosts granted block {b} ({answered} of "
            f"{total - 1} others answered), {need} are needed"
        )
        # a build from before IPv6 refused with exactly {"granted": False} (its IPv4 parse
        # failed); later builds send their voters, and this one "ipv6" too
        old = sorted(
            n for (n, _), r in zip(others, replies, strict=True) if r == {"granted": False}
        )
        if subnet.version == 6 and old:
            why += (
                f"; {', '.join(old)} {'runs' if len(old) == 1 else 'run'} a pyoverlay from "
                "before IPv6, which refuses every IPv6 block: upgrade, then retry"
            )
        return False, why

    async def _borrow(self, subnet: IPNet, ip: IPAddr, owner: str) -> None:
        addr = next((a for n, a, up in self.voters() if n == owner and up), None)
        body = {"subnet": str(subnet), "ip": str(ip), "borrower": self.me}
        reply = await self.transport.call(addr, LEND, body, CLAIM_TIMEOUT) if addr else None
        if reply is None:
            raise Conflict(
                f"address {ip} is in block {block_of(subnet, ip)}, which pyoverlay host {owner} "
                "owns, and that host does not answer; retry when it is reachable, or leave "
                "--ip out"
            )
        if reply.get("error"):
            raise Conflict(
                f"address {ip} cannot be used: pyoverlay host {owner} says {reply['error']}; "
                "pick another --ip or leave it out"
            )
        self.ownership.borrowed[(str(subnet), str(ip))] = owner
        self.save()
        log.info("address borrowed", pool=str(subnet), address=str(ip), owner=owner)

    async def give_back(self, subnet: IPNet, ip: IPAddr) -> None:
        """A borrowed address was released: tell its owner (best effort: a lost
        return keeps the address reserved on the owner, which is safe)."""
        owner = self.ownership.borrowed.pop((str(subnet), str(ip)), None)
        if owner is None:
            return
        self.save()
        addr = next((a for n, a, up in self.voters() if n == owner and up), None)
        if addr:
            body = {"subnet": str(subnet), "ip": str(ip), "borrower": self.me}
            await self.transport.call(addr, RETURN, body, CLAIM_TIMEOUT)

    async def release_subnet(self, subnet: IPNet) -> None:
        """This host no longer uses `subnet` (ReleasePool): give its blocks back.

        Blocks with addresses lent to other hosts stay ours until those come
        back.  The voters' grants are released too (best effort: a voter that
        does not answer keeps the block promised to us, which wastes it but is
        safe).
        """
        s = str(subnet)
        lent_blocks = {
            str(block_of(subnet, ip_address(ip))) for (n, ip) in self.ownership.lent if n == s
        }
        released = [k for k in self.ownership.owned if k[0] == s and k[1] not in lent_blocks]
        await self._release_blocks(subnet, released)

    async def _release_blocks(self, subnet: IPNet, keys: list[tuple[str, str]]) -> None:
        s = str(subnet)
        for key in keys:
            self.ownership.owned.discard(key)
            self.ownership.grants.pop(key, None)
            self.transport.withdraw(scope(subnet), key[1])
        self.save()
        others = [a for n, a, reachable in self.voters() if n != self.me and reachable]
        await asyncio.gather(
            *(
                self.transport.call(
                    a, RELEASE, {"subnet": s, "block": b, "claimer": self.me}, CLAIM_TIMEOUT
                )
                for _, b in keys
                for a in others
            )
        )

    # -- forget --------------------------------------------------------------------

    async def forget(self, node: str) -> dict[str, Any]:
        """Remove a dead host for good: it votes no more, its blocks go back to the pool.

        Refused for a host that is alive or suspect in our view.  Every reachable
        voter is asked; each agrees only if the host is not alive in its view
        either, and drops it at once.  The blocks become claimable as soon as a
        majority has dropped it (a claim needs a majority of grants, and a voter
        that still remembers the host's grant refuses).
        """
        status = {n: st for n, _, st in self.transport.members()}.get(node)
        if node == self.me:
            raise InvalidOption("a host cannot forget itself; use `pyoverlay leave`")
        if status in LIVE:
            raise Conflict(
                f"pyoverlay host {node} is {status}; stop it (or run `pyoverlay leave` on it) "
                "before forgetting it"
            )
        if node not in self.ownership.voters and node not in self.ownership.forgotten:
            raise InvalidOption(f"pyoverlay host {node} is not known here (`pyoverlay members`)")
        voters = self.voters()
        self.ownership.drop_voter(node, forget=True)
        self.save()
        others = [a for n, a, reachable in voters if n not in (self.me, node) and reachable]
        replies = await asyncio.gather(
            *(self.transport.call(a, FORGET, {"node": node}, CLAIM_TIMEOUT) for a in others)
        )
        agreed = 1 + sum(1 for r in replies if r and r.get("forgot"))
        need = quorum(len(voters))
        log.info("host forgotten", node=node, agreed=agreed, voters=len(voters))
        return {"forgot": node, "agreed": agreed, "voters": len(voters), "majority": agreed >= need}

    async def _save_now(self) -> None:
        self.save()

    # -- RPC handlers (answered once what they granted is on disk; the write does not
    # hold up the event loop) --------------------------------------------------------

    async def handle_claim(self, body: dict[str, Any]) -> dict[str, Any]:
        # "ipv6": this voter understands IPv6 blocks (one from before refuses them all)
        s, b, claimer = str(body.get("subnet")), str(body.get("block")), str(body.get("claimer"))
        try:
            net = ip_network(s)
            if not is_block(net, b):
                return {"granted": False, "ipv6": True}
            self._refresh(net)
        except ValueError:
            return {"granted": False, "ipv6": True}
        if claimer in self.ownership.forgotten:
            return {"granted": False, "ipv6": True}
        voters = sorted(n for n, _, _ in self.voters())
        granted = self.ownership.vote(s, b, claimer)
        if granted:
            await self.save_async()  # durable before we answer
        return {"granted": granted, "voters": voters, "ipv6": True}

    async def handle_release(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ownership.release(
            str(body.get("subnet")), str(body.get("block")), str(body.get("claimer"))
        )
        await self.save_async()
        return {}

    async def handle_lend(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            subnet, ip = ip_network(str(body.get("subnet"))), ip_address(str(body.get("ip")))
        except ValueError:
            return {"error": "a malformed request"}
        if ip.version != subnet.version:
            return {"error": "a malformed request"}
        who = str(body.get("borrower"))
        key = (str(subnet), str(ip))
        if self.ownership.lent.get(key) == who:
            return {"lent": True}  # a retry
        if not self.ownership.owns(subnet, ip):
            return {"error": f"{ip} is not in a block this host owns"}
        why = self.lend_hook(subnet, ip, who)
        if why is not None:
            return {"error": why}
        self.ownership.lent[key] = who
        await self.save_async()  # durable before we answer
        return {"lent": True}

    async def handle_return(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (str(body.get("subnet")), str(body.get("ip")))
        if self.ownership.lent.get(key) != str(body.get("borrower")):
            return {}
        del self.ownership.lent[key]
        try:
            self.unlend_hook(ip_network(key[0]), ip_address(key[1]), str(body.get("borrower")))
        except ValueError:
            pass
        await self.save_async()
        return {}

    async def handle_forget(self, body: dict[str, Any]) -> dict[str, Any]:
        node = str(body.get("node"))
        status = {n: st for n, _, st in self.transport.members()}.get(node)
        if node == self.me or status in LIVE:
            return {"forgot": False}
        self.ownership.drop_voter(node, forget=True)
        await self.save_async()
        return {"forgot": True}

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {
            CLAIM: self.handle_claim,
            RELEASE: self.handle_release,
            LEND: self.handle_lend,
            RETURN: self.handle_return,
            FORGET: self.handle_forget,
        }

    def to_json(self) -> dict[str, object]:
        return self.ownership.to_json()

    def load(self, d: dict[str, object]) -> None:
        self.ownership.load(d)
