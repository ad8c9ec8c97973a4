"""PURE gossip node: SWIM probes, piggybacked dissemination, push-pull anti-entropy.

Inputs are method calls with the current time (`tick`, `on_packet`,
`on_stream`, `on_stream_reply`, `publish`, ...); outputs are `Send`s in
`outbox` and events in `events()`.  The asyncio runtime (runtime.py) and the
simulator (sim.py) only move bytes and time; every decision is here.

Probe cycle (SWIM + Lifeguard): every probe_interval x (1 + health) one
member is pinged; without an ack within probe_timeout x (1 + health),
`indirect_checks` others are asked to ping it (they answer ack or nack); at
the end of the interval an unacked member is suspected.  The health score
rises when we miss acks without getting nacks or must refute a suspicion of
ourselves, so a slow node slows its own accusations.

Dissemination: member and row updates wait in a queue and ride on every
ping/ack/gossip packet (at most packet_budget bytes) until sent
retransmit_mult x ceil(log10(n + 1)) times; a newer update for the same key
replaces the queued one.  Every pushpull_interval, and on join, a full
state exchange over a stream repairs anything lost.  Every
reconnect_interval a dead member (or a seed, when alone) is tried, which
heals partitions: the other side refutes our "dead" with a higher
incarnation.

Per-network replication (scoping.py): rows of a network (`peer/<vni>`) are
kept only by hosts that joined it (`join_network`) and by their owner, and
only sent to them: piggybacked to a member only if it is in the network,
gossiped each round to random members of each network with pending
updates, and filtered out of push-pull states.  Joining a network is a
push-pull with a member already in it at once and again `net_resync` later
(rows written while our subscription was still spreading); until the first
one answers, `network_ready` is False.  Anti-entropy pairs with a random
member and with a random member of each of our networks (only they keep
those rows).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyoverlay.cluster.broadcasts import Broadcasts, Item
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.membership import ALIVE, DEAD, LEFT, SUSPECT, Member, MemberEvent, Members
from pyoverlay.cluster.scoping import SUBSCRIPTIONS, Interest, network_of, subscription
from pyoverlay.cluster.table import Row, RowEvent, Table

Event = MemberEvent | RowEvent
PACKET_OVERHEAD = 120  # bytes of a packet that are not piggybacked updates
MAX_LARGE = 1 << 20  # an update larger than this is not sent at all (counted: never_fit)


@dataclass(frozen=True)
class Send:
    addr: str
    msg: dict[str, Any]
    stream: bool = False  # a push-pull request: the runtime calls on_stream_reply with the answer


@dataclass
class Probe:
    target: str
    addr: str
    seq: int
    timeout_at: float
    acked: bool = False
    indirect: int = 0
    nacks: int = 0


@dataclass
class Relay:
    origin: str  # address of the member that asked us
    seq: int  # its sequence number
    deadline: float


class GossipNode:
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
        self.config = config
        self.rng = rng
        me = Member(name, addr, incarnation, ALIVE, now, dict(meta or {}))
        self.members = Members(me, config)
        self._refuted = False  # we raised our incarnation while merging the current input
        self.table = Table(name, config.tombstone_ttl)
        self.local: dict[tuple[str, str], dict[str, Any]] = {}
        self.queue = Broadcasts()
        # updates too large for a packet: spread by stream to `gossip_nodes` members per
        # round, as many rounds as a packet update would be retransmitted
        self.large = Broadcasts()
        self.never_fit = 0  # updates larger than a stream may carry: dropped
        self.outbox: list[Send] = []
        self.malformed = 0  # updates that were valid JSON but not valid pyoverlay
        # True after the first full state exchange with another member (either way):
        # from then on the table is as good as the cluster's
        self.synced = False
        self.health = 0
        self.seq = 0
        self.seeds: list[str] = []
        self.probe: Probe | None = None
        self.probe_order: list[str] = []
        self.relays: dict[int, Relay] = {}
        self._events: list[Event] = []
        self.next_probe = now + rng.random() * config.probe_interval
        self.next_gossip = now + rng.random() * config.gossip_interval
        self.next_pushpull = now + config.pushpull_interval * (0.5 + rng.random() / 2)
        self.next_reconnect = now + config.reconnect_interval
        self.next_reap = now + 5.0
        self.networks: set[str] = set()  # the networks this host takes part in
        self.interest = Interest()  # the networks every other host takes part in
        self.ready: set[str] = set()  # joined networks whose rows have been fetched
        self.resync: dict[str, float] = {}  # joined network -> time of its second fetch
        self.foreign_rows = 0  # rows of networks we are not in, received and not stored
        self._enqueue_member(self.members.me)

    def _network_of(self, scope: str) -> str | None:
        return network_of(scope, self.config.network_tables)

    # -- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.members.me.name

    @property
    def addr(self) -> str:
        return self.members.me.addr

    # -- user API ------------------------------------------------------------

    def start(self, now: float, seeds: Iterable[str]) -> None:
        """Join: a full state exchange with every seed."""
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
        self._gossip(now)  # now, not at the next tick: a new container should be reachable at once
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
        self.resync.pop(net, None)
        self.publish(now, SUBSCRIPTIONS, self.name, subscription(self.networks), stamp)
        self.table.drop_where(lambda r: self._network_of(r.scope) == net and r.owner != self.name)
        self.queue.discard_net(net, keep=lambda item: item.payload.get("o") == self.name)

    def network_ready(self, net: str, synced: bool | None = None) -> bool:
        """True once `net`'s rows have been fetched from a member in it, or nobody else is
        in it (known once synced; `synced`: the caller's view, e.g. after a grace time)."""
        if net in self.ready:
            return True
        synced = self.synced if synced is None else synced
        if net in self.networks and synced and not self._net_peers(net):
            self.ready.add(net)
            return True
        return False

    def _net_peers(self, net: str) -> list[Member]:
        names = self.interest.members(net)
        return [m for m in self.members.others(ALIVE) if m.name in names]

    def _fetch_network(self, net: str) -> bool:
        peers = self._net_peers(net)
        if peers:
            self._pushpull(self.rng.choice(peers).addr, net)
        return bool(peers)

    def withdraw(self, now: float, scope: str, key: str, stamp: int | None = None) -> None:
        self.local.pop((scope, key), None)
        cur = self.table.rows.get((scope, key))
        if cur is not None and cur.value is None:
            return
        self._enqueue_row(self.table.write(now, scope, key, None, stamp), now)
        self._gossip(now)
        self._collect()

    def leave(self, now: float) -> None:
        me = self.members.me
        me.status = LEFT
        self._enqueue_member(me)
        for m in self.members.others(ALIVE, SUSPECT):
            self.outbox.append(Send(m.addr, self._packet({"t": "gossip"}, m.name)))

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def alive_members(self) -> list[Member]:
        return [self.members.me, *self.members.others(ALIVE, SUSPECT)]

    # -- time ----------------------------------------------------------------

    def next_deadline(self) -> float:
        times = [
            self.next_probe,
            self.next_pushpull,
            self.next_reconnect,
            self.next_reap,
            *self.resync.values(),
        ]
        if self.queue or self.large:  # an idle node does not wake up 5 times a second
            times.append(self.next_gossip)
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
        for net, at in list(self.resync.items()):
            if now >= at:
                del self.resync[net]
                self._fetch_network(net)
        if now >= self.next_reconnect:
            self.next_reconnect = now + self.config.reconnect_interval
            self._reconnect()
        if now >= self.next_reap:
            self.next_reap = now + 5.0
            self._reap(now)
        self._collect()

    # -- probing ---------------------------------------------------------------

    def _start_probe(self, now: float) -> None:
        interval = self.config.probe_interval * (1 + self.health)
        self.next_probe = now + interval
        candidates = {m.name: m for m in self.members.others(ALIVE, SUSPECT)}
        if not candidates:
            self.probe = None
            return
        self.probe_order = [n for n in self.probe_order if n in candidates]
        if not self.probe_order:
            self.probe_order = list(candidates)
            self.rng.shuffle(self.probe_order)
        target = candidates[self.probe_order.pop()]
        self.seq += 1
        self.probe = Probe(
            target.name,
            target.addr,
            self.seq,
            now + self.config.probe_timeout * (1 + self.health),
        )
        msg = {"t": "ping", "seq": self.seq, "from": self.name, "to": target.name}
        packet = self._packet(msg, target.name, buddy=target, counted=False)
        self.outbox.append(Send(target.addr, packet))

    def _indirect_probe(self, p: Probe) -> None:
        relays = [m for m in self.members.others(ALIVE) if m.name != p.target]
        self.rng.shuffle(relays)
        for m in relays[: self.config.indirect_checks]:
            msg = {"t": "preq", "seq": p.seq, "from": self.name, "to": p.target, "ta": p.addr}
            self.outbox.append(Send(m.addr, msg))
            p.indirect += 1
        if not p.indirect:
            p.indirect = -1  # nobody to ask: do not retry every tick

    def _finish_probe(self, now: float) -> None:
        p, self.probe = self.probe, None
        if p is None:
            return
        if p.acked:
            self.health = max(0, self.health - 1)
            return
        # Lifeguard: relays that answered nack prove our own network works;
        # silence from them too suggests the problem is here.
        if p.indirect <= 0 or p.nacks < p.indirect:
            self.health = min(self.config.awareness_max, self.health + 1)
        u = self.members.suspect(now, p.target)
        if u is not None:
            self._enqueue(("m", p.target), "m", u)

    # -- packets ---------------------------------------------------------------

    def on_packet(self, now: float, src: str, msg: dict[str, Any]) -> None:
        self._refuted = False
        try:
            self._merge_piggyback(now, msg)
            self._answer_refutation(src)
            t = msg["t"]
            if t == "ping":
                if msg.get("to") == self.name:
                    reply = {"t": "ack", "seq": int(msg["seq"]), "from": self.name}
                    sender = str(msg.get("from"))
                    self.outbox.append(Send(src, self._packet(reply, sender, counted=False)))
            elif t == "ack":
                seq = int(msg["seq"])
                if self.probe and self.probe.seq == seq:
                    self.probe.acked = True
                relay = self.relays.pop(seq, None)
                if relay is not None:
                    self.outbox.append(
                        Send(relay.origin, {"t": "ack", "seq": relay.seq, "from": self.name})
                    )
            elif t == "nack":
                if self.probe and self.probe.seq == int(msg["seq"]):
                    self.probe.nacks += 1
            elif t == "preq":
                self.seq += 1
                self.relays[self.seq] = Relay(src, int(msg["seq"]), now + self.config.probe_timeout)
                ping = {"t": "ping", "seq": self.seq, "from": self.name, "to": str(msg["to"])}
                self.outbox.append(Send(str(msg["ta"]), ping))
        except (KeyError, TypeError, ValueError, OverflowError):
            self.malformed += 1
        self._collect()

    def _merge_piggyback(self, now: float, msg: dict[str, Any]) -> None:
        for u in msg.get("mu") or ():
            if isinstance(u, dict) and self.members.apply(now, u):
                self._after_member_update(u)
        for r in msg.get("ru") or ():
            if isinstance(r, dict):
                self._merge_row(now, r)

    def _merge_row(self, now: float, r: dict[str, Any]) -> None:
        net = self._network_of(str(r.get("s")))
        if net is not None and net not in self.networks and r.get("o") != self.name:
            self.foreign_rows += 1  # a network we are not in (our own rows we always check)
            return
        row = self.table.merge(now, r)
        if row is not None:
            self._enqueue_row(row, now)
            self._check_own(now, row)

    def _after_member_update(self, u: dict[str, Any]) -> None:
        if u.get("n") == self.name:
            self.health = min(self.config.awareness_max, self.health + 1)
            self._enqueue_member(self.members.me)
            self._refuted = True
        else:
            self._enqueue(("m", str(u["n"])), "m", u)

    def _answer_refutation(self, addr: str) -> None:
        """Whoever just told us we are suspect or dead hears our new "alive" at once, not at
        the next gossip round: while it believes us dead it hides our rows (and its hosts
        drop the traffic to our containers). The queue still spreads it to the others."""
        if self._refuted:
            self._refuted = False
            msg = {"t": "gossip", "from": self.name, "mu": [self.members.me.update()]}
            self.outbox.append(Send(addr, msg))

    def _check_own(self, now: float, row: Row) -> None:
        """A row under our name that we did not write in this life: reassert or delete it."""
        if row.owner != self.name:
            return
        want = self.local.get((row.scope, row.key))
        if want == row.value:
            return
        self._enqueue_row(self.table.write(now, row.scope, row.key, want, self.table.clock), now)

    # -- dissemination -----------------------------------------------------------

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

    # -- push-pull -----------------------------------------------------------------

    def _state(self, now: float, to: str | None, nets: Iterable[str] | None) -> dict[str, Any]:
        """Our state for member `to` (global rows, its own, and those of `nets`; None: all)."""
        wanted = None if nets is None else set(nets)
        return {
            "members": [m.update() for m in self.members.by_name.values()],
            "rows": self.table.dump(
                now,
                lambda r: (
                    wanted is None
                    or r.owner == to
                    or (net := self._network_of(r.scope)) is None
                    or net in wanted
                ),
            ),
        }

    def _net_state(self, now: float, net: str) -> dict[str, Any]:
        """Only the rows of network `net` (a network push-pull: no members, no global rows)."""
        scopes = [f"{table}/{net}" for table in self.config.network_tables]
        return {
            "rows": [r.wire(now) for s in scopes for r in self.table.scopes.get(s, {}).values()]
        }

    def _pushpull(self, addr: str, net: str | None = None) -> None:
        """A full state exchange with `addr`, or (net) one of that network's rows only."""
        msg: dict[str, Any] = {"t": "pp", "from": self.name, "to": addr, "state": {}}
        if net is not None:
            msg["only"] = net
        self.outbox.append(Send(addr, msg, stream=True))

    def fill_stream(self, now: float, msg: dict[str, Any]) -> dict[str, Any]:
        """Called by the runtime just before sending a push-pull, so the state is current."""
        if msg.get("t") == "pp" and isinstance(msg.get("only"), str):
            net = msg["only"]
            return {**msg, "nets": [net], "state": self._net_state(now, net)}
        if msg.get("t") == "pp":
            to = next(
                (m.name for m in self.members.by_name.values() if m.addr == msg.get("to")), None
            )
            nets = self.interest.by_node.get(to, frozenset()) if to else self.networks
            return {
                **msg,
                "nets": sorted(self.networks),
                "state": self._state(now, to, nets),
            }
        return msg

    def on_stream(self, now: float, src: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Serve a push-pull: merge theirs, answer with ours (and the networks they are in;
        a refutation of what they said about us rides in the reply). Or take updates too
        large for a packet (`rows`), as if they had come in one."""
        if msg.get("t") == "rows":
            self._merge_piggyback(now, msg)
            self._collect()
            return {"t": "rowsr", "from": self.name}
        self._merge_state(now, msg.get("state") or {})
        self._refuted = False
        only = msg.get("only")
        if not isinstance(only, str):  # a full exchange (not one network's rows)
            self.synced = self.synced or msg.get("from") != self.name
        self._collect()
        if isinstance(only, str):
            return {
                "t": "ppr",
                "from": self.name,
                "nets": [only],
                "state": self._net_state(now, only),
            }
        asked = msg.get("nets")
        nets = [str(n) for n in asked[:4096]] if isinstance(asked, list) else None
        sender = str(msg.get("from"))
        return {
            "t": "ppr",
            "from": self.name,
            "nets": nets,
            "state": self._state(now, sender, nets),
        }

    def on_stream_reply(self, now: float, src: str, msg: dict[str, Any]) -> None:
        self._refuted = False
        self._merge_state(now, msg.get("state") or {})
        self._answer_refutation(src)
        state = msg.get("state")
        if isinstance(state, dict) and "members" in state:  # a full exchange, not a network's
            self.synced = self.synced or msg.get("from") != self.name
        served = msg.get("nets")
        if isinstance(served, list):
            self.ready |= self.networks & {str(n) for n in served[:4096]}
        self._collect()

    def _merge_state(self, now: float, state: dict[str, Any]) -> None:
        try:
            # what was news to us is gossiped on, so a join or a healed
            # partition spreads in gossip rounds, not push-pull periods
            for u in state.get("members") or ():
                if isinstance(u, dict) and self.members.apply(now, u):
                    self._after_member_update(u)
            for r in state.get("rows") or ():
                if isinstance(r, dict):
                    self._merge_row(now, r)
        except (TypeError, AttributeError, ValueError, OverflowError):
            self.malformed += 1

    def _reconnect(self) -> None:
        dead = [m.addr for m in self.members.others(DEAD)]
        candidates = dead or (self.seeds if self.members.live_count() == 1 else [])
        if candidates:
            self._pushpull(self.rng.choice(candidates))

    # -- housekeeping -----------------------------------------------------------------

    def _reap(self, now: float) -> None:
        self.table.reap(now)
        for m in list(self.members.by_name.values()):
            if m.status in (DEAD, LEFT) and now - m.since > self.config.dead_rows_ttl:
                self.table.drop_owner(m.name)
        self.members.forget_dead(now)

    def _collect(self) -> None:
        """Move membership events into the table (hide/unhide rows) and the event list."""
        for ev in self.members.events:
            self.table.set_owner_dead(ev.name, ev.status in (DEAD, LEFT))
            self._events.append(ev)
        self.members.events.clear()
        for row_ev in self.table.events:
            if row_ev.scope == SUBSCRIPTIONS and row_ev.key != self.name:
                self.interest.update(row_ev.key, row_ev.value)
        self._events.extend(self.table.events)
        self.table.events.clear()
