"""PURE gossip node: SWIM probes, piggybacked dissemination, push-pull anti-entropy.

Inputs are method calls with the current time (`tick`, `on_packet`,
`on_stream`, `on_stream_reply`, `publish`, ...); outputs are `Send`s in
`outbox` and events in `events()`.  The asyncio runtime (runtime.py) and the
simulator (testing/sim.py) only move bytes and time; every decision is here,
in layers, one concept each:

    nodestate.py    state; taking in member updates and rows
    disseminate.py  the update queue, packets, gossip rounds, large updates
    probe.py        the SWIM + Lifeguard probe cycle
    antientropy.py  push-pull, network fetches, reconnects
    node.py         the user API (publish, networks, leave) and the timer

Per-network replication (scoping.py): rows of a network (`peer/<vni>`) are
kept only by hosts that joined it (`join_network`) and by their owner, and
only sent to them.  Anti-entropy pairs with a random member and with a
random member of each of our networks (only they keep those rows).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from pyoverlay.cluster.antientropy import AntiEntropy
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.membership import ALIVE, LEFT, SUSPECT
from pyoverlay.cluster.nodestate import Event, Send
from pyoverlay.cluster.scoping import SUBSCRIPTIONS, subscription

__all__ = ["Event", "GossipNode", "Send"]


class GossipNode(AntiEntropy):
    def __init__(
        self,
        name: str,
        addr: str,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        meta: dict[str, str] | None = None,
        incarnation: int = 0,
    ) -> None:
        """`incarnation`: where this life starts; a restarted node passes its last one + 1,
        so its first "alive" beats the "dead" the others may hold of its previous life."""
        super().__init__(name, addr, config, rng, now, meta, incarnation)
        self._enqueue_member(self.members.me)

    def start(self, now: float, seeds: Iterable[str]) -> None:
        """Join: a full state exchange with every seed."""
        self.started = now
        self.seeds = [s for s in seeds if s != self.addr]
        for s in self.seeds:
            self._pushpull(s)

    def add_seed(self, addr: str) -> None:
        """A host to join through, learnt later (swarm's node discovery): exchange state with it
        unless it is a member we already know alive."""
        if addr == self.addr or addr in self.seeds:
            return
        self.seeds.append(addr)
        if not any(m.addr == addr for m in self.members.others(ALIVE, SUSPECT)):
            self._pushpull(addr)

    def publish(
        self, now: float, scope: str, key: str, value: dict[str, Any], stamp: int | None = None
    ) -> None:
        self.local[(scope, key)] = value
        self._enqueue_row(self.table.write(now, scope, key, value, stamp), now)
        # now, not at the next tick: a new container should be reachable at once (a
        # network row straight to its members; anything else with a gossip round)
        if not self._tell_network(now, ("r", scope, key)):
            self._gossip(now)
        self._collect()

    def join_network(self, now: float, net: str, stamp: int | None = None) -> None:
        """Take part in `net`: store and receive its rows (fetched from a member in it)."""
        if net in self.networks:
            return
        self.networks.add(net)
        self.publish(now, SUBSCRIPTIONS, self.name, subscription(self.networks), stamp)
        if self._fetch_network(net):
            self.resync[net] = now + self.config.net_resync
        elif self.synced:
            self.ready.add(net)  # nobody else is in it: nothing to fetch

    def leave_network(self, now: float, net: str, stamp: int | None = None) -> None:
        """Stop taking part in `net`: its rows of other hosts are dropped, no event."""
        if net not in self.networks:
            return
        self.networks.discard(net)
        self.ready.discard(net)
        self.heard.pop(net, None)
        self.resync.pop(net, None)
        self.publish(now, SUBSCRIPTIONS, self.name, subscription(self.networks), stamp)
        self.table.drop_where(lambda r: self._network_of(r.scope) == net and r.owner != self.name)
        self.queue.discard_net(net, keep=lambda item: item.payload.get("o") == self.name)

    def withdraw(self, now: float, scope: str, key: str, stamp: int | None = None) -> None:
        self.local.pop((scope, key), None)
        cur = self.table.rows.get((scope, key))
        if cur is not None and cur.value is None:
            return
        self._enqueue_row(self.table.write(now, scope, key, None, stamp), now)
        if not self._tell_network(now, ("r", scope, key)):
            self._gossip(now)
        self._collect()

    def leave(self, now: float) -> None:
        me = self.members.me
        me.status = LEFT
        self._enqueue_member(me)
        for m in self.members.others(ALIVE, SUSPECT):
            self.outbox.append(Send(m.addr, self._packet({"t": "gossip"}, m.name)))

    def next_deadline(self) -> float:
        times = [
            self.next_probe,
            self.next_pushpull,
            self.next_reconnect,
            self.next_reap,
            *self.resync.values(),
            *([self.started + self.config.sync_grace] if self.pending_sync else []),
        ]
        if self.queue or self.large:  # an idle node does not wake up 5 times a second
            times.append(self.next_gossip)
        if self.direct:
            times.append(self.direct_at)
        if self.probe and not self.probe.acked and not self.probe.indirect:
            times.append(self.probe.timeout_at)
        times += [r.deadline for r in self.relays.values()]
        exp = self.members.next_expiry()
        if exp is not None:
            times.append(exp)
        return min(times)

    def tick(self, now: float) -> None:
        p = self.probe
        if p and not p.acked and not p.indirect and now >= p.timeout_at:
            self._indirect_probe(p)
        if now >= self.next_probe:
            self._finish_probe(now)
            self._start_probe(now)
        for seq, r in list(self.relays.items()):
            if now >= r.deadline:
                del self.relays[seq]
                self.outbox.append(Send(r.origin, {"t": "nack", "seq": r.seq, "from": self.name}))
        for u in self.members.expire(now):
            self._enqueue(("m", u["n"]), "m", u)
        if self.direct and now >= self.direct_at:
            self._send_direct(now)
        if now >= self.next_gossip:
            self.next_gossip = now + self.config.gossip_interval
            self._gossip(now)
        if now >= self.next_pushpull:
            self.next_pushpull = now + self.config.pushpull_interval * (
                0.75 + self.rng.random() / 2
            )
            # one random member, and one random member of each network we are in: a
            # network's rows are repaired only by a host that keeps them
            # (the latter exchange only that network's rows: at 1,000 hosts the members
            # and global rows are ~160 KB, too much to send once per network)
            live = self.members.others(ALIVE)
            partner = self.rng.choice(live).addr if live else None
            if partner is not None:
                self._pushpull(partner)
            for net in sorted(self.networks):
                peers = self._net_peers(net)
                if peers and not any(m.addr == partner for m in peers):
                    self._pushpull(self.rng.choice(peers).addr, net)
        if self.pending_sync and now >= self.started + self.config.sync_grace:
            self.pending_sync = False
            self._now_synced(now)
        for net, at in list(self.resync.items()):
            if now >= at:
                del self.resync[net]
                if self._fetch_network(net) and not self.network_ready(net):
                    self.resync[net] = now + self.config.net_resync  # until it is
        if now >= self.next_reconnect:
            self.next_reconnect = now + self.config.reconnect_interval
            self._reconnect()
        if now >= self.next_reap:
            self.next_reap = now + 5.0
            self._reap(now)
        self._collect()
