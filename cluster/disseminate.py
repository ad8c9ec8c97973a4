"""PURE: dissemination. Member and row updates wait in a queue and ride on every
ping/ack/gossip packet (at most packet_budget bytes) until sent
retransmit_mult x ceil(log10(n + 1)) times; a newer update for the same key
replaces the queued one. A network's rows go only to hosts in that network
(piggybacked to a member only if it is in it, gossiped each round to random
members of each network with pending updates). An update too large for a
packet goes by stream to `gossip_nodes` members per round instead, as often."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pyoverlay.cluster.broadcasts import Item
from pyoverlay.cluster.membership import ALIVE, DEAD, SUSPECT, Member
from pyoverlay.cluster.nodestate import NodeState, Send
from pyoverlay.cluster.table import Row

PACKET_OVERHEAD = 120  # bytes of a packet that are not piggybacked updates
MAX_LARGE = 1 << 20  # an update larger than this is not sent at all (counted: never_fit)


class Dissemination(NodeState):
    def _enqueue(
        self, key: tuple[str, ...], kind: str, payload: dict[str, Any], net: str | None = None
    ) -> None:
        size = len(json.dumps(payload, separators=(",", ":"))) + 1
        if net is None:
            left = self.config.retransmits(self.members.live_count())
        else:
            # (if nobody else is in the network, the next round drops it: push-pull
            # serves later joiners)
            left = self.config.retransmits(len(self._net_peers(net)) + 1)
        self.queue.discard(key)
        self.large.discard(key)
        if size > MAX_LARGE:
            self.never_fit += 1  # push-pull cannot carry it either
        elif size > self.config.packet_budget - PACKET_OVERHEAD:
            self.large.put(key, Item(kind, payload, size, left, net))
        else:
            self.queue.put(key, Item(kind, payload, size, left, net))

    def _enqueue_member(self, m: Member) -> None:
        self._enqueue(("m", m.name), "m", m.update())

    def _enqueue_row(self, row: Row, now: float) -> None:
        self._enqueue(("r", row.scope, row.key), "r", row.wire(now), self._network_of(row.scope))

    def _packet(
        self,
        msg: dict[str, Any],
        to: str,
        buddy: Member | None = None,
        counted: bool = True,
        nets: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """Fill `msg` for member `to` with queued updates up to the packet budget
        (suspicion of `buddy` first; network rows only of networks `to` is in)."""
        first = ("m", buddy.name) if buddy is not None and buddy.status == SUSPECT else None
        mu: list[dict[str, Any]] = []
        ru: list[dict[str, Any]] = []
        wanted = nets or (lambda net: self.interest.wants(to, net))
        budget = self.config.packet_budget - PACKET_OVERHEAD
        for item in self.queue.take(budget, first, counted, wanted):
            (mu if item.kind == "m" else ru).append(item.payload)
        if mu:
            msg["mu"] = mu
        if ru:
            msg["ru"] = ru
        return msg

    def _tell_network(self, now: float, key: tuple[str, ...]) -> bool:
        """A network row we wrote ourselves (a container started or stopped here) goes
        straight to the network's live members, at once unless a straight round went out
        within the last gossip interval (then with the next round: a burst costs one round
        of packets, not one per row). False: it does not go straight (a global row, or
        one too large for a packet: it goes by stream), and no older version of it will."""
        item = self.queue.get(key)
        if item is None or item.net is None or self.config.direct_fanout <= 0:
            for pending in self.direct.values():
                pending.pop(key, None)
            return False
        self.direct.setdefault(item.net, {})[key] = item  # (gossip may spend it meanwhile)
        if now >= self.direct_at:
            self._send_direct(now)
        return True

    def _send_direct(self, now: float) -> None:
        """One straight round. A network with no member known yet keeps its rows until we
        are synced (a restart re-announces its containers before gossip has started: they
        go out once the first exchange has told us who is in which network)."""
        self.direct_at = now + self.config.gossip_interval
        budget = self.config.packet_budget - PACKET_OVERHEAD
        for net, items in list(self.direct.items()):
            peers = self._net_peers(net)
            if not peers and not self.synced:
                continue
            del self.direct[net]
            packets: list[list[dict[str, Any]]] = []
            used = budget
            for i in items.values():
                if used + i.size > budget:
                    packets.append([])
                    used = 0
                packets[-1].append(i.payload)
                used += i.size
            if len(peers) > self.config.direct_fanout:
                peers = self.rng.sample(peers, self.config.direct_fanout)
            for m in peers:
                for ru in packets:
                    self.outbox.append(Send(m.addr, {"t": "gossip", "from": self.name, "ru": ru}))

    def _gossip(self, now: float) -> None:
        if self.large:
            self._gossip_large()
        if not self.queue:
            return
        targets = self.members.others(ALIVE, SUSPECT) + [
            m for m in self.members.others(DEAD) if now - m.since < self.config.gossip_to_dead
        ]
        fanout = self.config.gossip_nodes
        chosen = self.rng.sample(targets, min(len(targets), fanout))
        # each network with updates waiting reaches `fanout` of its own members per round:
        # random targets that are in it count, members of it make up the rest (a network
        # every host is in needs no extra packet, a network of 10 in 1,000 hosts does)
        for net in self.queue.nets():
            peers = self._net_peers(net)
            if not peers:
                # nobody else is in it: push-pull serves later joiners. Before our first
                # full exchange we do not know who is in it yet: the update waits.
                if self.synced:
                    self.queue.discard_net(net, keep=lambda item: False)
                continue
            picked = {m.name for m in chosen}
            have = sum(1 for name in picked if self.interest.wants(name, net))
            extra = [m for m in peers if m.name not in picked]
            chosen += self.rng.sample(extra, max(0, min(len(extra), fanout - have)))
        for m in chosen:
            if not self.queue:
                break
            msg = self._packet({"t": "gossip", "from": self.name}, m.name)
            if "ru" in msg or "mu" in msg:  # the queue may hold only other networks' rows
                self.outbox.append(Send(m.addr, msg))

    def _gossip_large(self) -> None:
        """One round for the updates too large for a packet: each goes by stream to
        `gossip_nodes` random members (of its network, for a network row), one stream per
        member with everything it takes, until sent as often as a packet update."""
        live = self.members.others(ALIVE)
        fanout = self.config.gossip_nodes
        batches: dict[str, list[Item]] = {}
        for key, item in self.large.items():
            if item.net is None:
                pool = live
            else:
                names = self.interest.members(item.net)
                pool = [m for m in live if m.name in names]
            if not pool and (item.net is None or self.synced):
                self.large.discard(key)  # nobody to tell: push-pull serves later joiners
                continue
            for m in self.rng.sample(pool, min(len(pool), fanout)):
                batches.setdefault(m.addr, []).append(item)
            self.large.spent(key)
        for addr, items in batches.items():
            mu = [i.payload for i in items if i.kind == "m"]
            ru = [i.payload for i in items if i.kind == "r"]
            msg = {"t": "rows", "from": self.name, "mu": mu, "ru": ru}
            self.outbox.append(Send(addr, msg, stream=True))
