"""PURE: a gossip node's state (membership, table, queues, timers) and how it takes in what
others say: member updates, rows, refutations of what they say about us."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from pyoverlay.cluster.broadcasts import Broadcasts, Item
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.membership import ALIVE, DEAD, LEFT, SUSPECT, Member, MemberEvent, Members
from pyoverlay.cluster.scoping import SUBSCRIPTIONS, Interest, network_of
from pyoverlay.cluster.table import Row, RowEvent, Table

Event = MemberEvent | RowEvent


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


class NodeState:
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
        # our own network rows not yet sent straight to their network's members (a
        # burst within a gossip interval goes in one round, many rows per packet)
        self.direct: dict[str, dict[tuple[str, ...], Item]] = {}
        self.direct_at = now  # no straight send before this (one round per interval)
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
        self.heard: dict[str, set[str]] = {}  # joined network -> members that answered
        self.asked: dict[str, set[str]] = {}  # push-pull partner -> the networks we named
        self.started = now
        self.pending_sync = False  # a full exchange with an unsynced member, in the grace
        self.resync: dict[str, float] = {}  # joined network -> time of its second fetch
        self.foreign_rows = 0  # rows of networks we are not in, received and not stored

    def _network_of(self, scope: str) -> str | None:
        return network_of(scope, self.config.network_tables)

    @property
    def name(self) -> str:
        return self.members.me.name

    @property
    def addr(self) -> str:
        return self.members.me.addr

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def alive_members(self) -> list[Member]:
        return [self.members.me, *self.members.others(ALIVE, SUSPECT)]

    def _net_peers(self, net: str) -> list[Member]:
        names = self.interest.members(net)
        return [m for m in self.members.others(ALIVE) if m.name in names]

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

    # provided by the dissemination layer
    def _enqueue_row(self, row: Row, now: float) -> None:
        raise NotImplementedError

    def _enqueue(
        self, key: tuple[str, ...], kind: str, payload: dict[str, Any], net: str | None = None
    ) -> None:
        raise NotImplementedError

    def _enqueue_member(self, m: Member) -> None:
        raise NotImplementedError
