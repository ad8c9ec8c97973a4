"""PURE SWIM membership state with Lifeguard suspicion.

States: alive -> suspect -> dead, and left (graceful).  An update names a
member, its incarnation and a state; precedence (SWIM):

    alive(i)   beats alive/suspect/dead with incarnation < i
    suspect(i) beats alive(j) for j <= i
    dead(i)    beats alive/suspect(j) for j <= i;  left beats dead

Only a member raises its own incarnation: told it is suspect or dead (or an
alive of a higher incarnation from a previous life), it refutes with i + 1.

Suspicion (Lifeguard): a suspect is declared dead after a timeout that starts
at `high` and falls towards `low` as independent members confirm it
(config.suspicion_timeout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyoverlay.cluster.config import GossipConfig, suspicion_timeout

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}


@dataclass
class Member:
    name: str
    addr: str  # "ip:port" of its gossip socket
    inc: int
    status: str
    since: float
    meta: dict[str, str] = field(default_factory=dict)

    def update(self) -> dict[str, Any]:
        """This member's state as a wire update."""
        return {"n": self.name, "a": self.addr, "i": self.inc, "s": self.status, "m": self.meta}


@dataclass(frozen=True)
class MemberEvent:
    name: str
    status: str  # alive (joined or back), suspect, dead, left
    addr: str
    meta: dict[str, str]


@dataclass
class Suspicion:
    start: float
    inc: int
    confirmers: set[str]


class Members:
    def __init__(self, me: Member, config: GossipConfig) -> None:
        self.me = me
        self.config = config
        self.by_name: dict[str, Member] = {me.name: me}
        self.suspicions: dict[str, Suspicion] = {}
        self.events: list[MemberEvent] = []
        self.banned: set[str] = set()  # forgotten for good (`pyoverlay forget`): never again
        self._views: dict[tuple[str, ...], list[Member]] = {}  # others() by statuses

    # -- views -----------------------------------------------------------

    def others(self, *statuses: str) -> list[Member]:
        """Other members in `statuses` (default alive + suspect), in join order.

        Cached per status set until a member changes status or goes (every probe,
        gossip round and update asks; at 1,000 members a scan each time was most of
        the work): callers get a copy they may change."""
        return list(self._view(statuses or (ALIVE, SUSPECT)))

    def _view(self, want: tuple[str, ...]) -> list[Member]:
        cached = self._views.get(want)
        if cached is None:
            me = self.me.name
            cached = [m for m in self.by_name.values() if m.name != me and m.status in want]
            self._views[want] = cached
        return cached

    def live_count(self) -> int:
        return 1 + len(self._view((ALIVE, SUSPECT)))

    # -- updates ---------------------------------------------------------

    def _emit(self, m: Member) -> None:
        self._views.clear()  # every status change and every new member passes here
        self.events.append(MemberEvent(m.name, m.status, m.addr, dict(m.meta)))

    def apply(self, now: float, u: dict[str, Any], accuser: str | None = None) -> bool:
        """Merge one update; True if it changed our view (and should be re-gossiped)."""
        try:
            name, addr, inc, status = str(u["n"]), str(u["a"]), int(u["i"]), str(u["s"])
            meta = {str(k): str(v) for k, v in (u.get("m") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return False
        if status not in RANK or inc < 0 or name in self.banned:
            return False
        if name == self.me.name:
            return self._about_me(inc, status)
        m = self.by_name.get(name)
        if m is None:
            m = Member(name, addr, inc, ALIVE if status == SUSPECT else status, now, meta)
            self.by_name[name] = m
            if status == SUSPECT:
                self._suspect(now, m, inc, accuser or str(u.get("f", "")))
            self._emit(m)
            return True
        if status == ALIVE:
            if inc <= m.inc:
                return False
            was = m.status
            m.inc, m.addr, m.meta = inc, addr, meta
            self.suspicions.pop(name, None)
            if was != ALIVE:
                m.status, m.since = ALIVE, now
                self._emit(m)
            return True
        if status == SUSPECT:
            if m.status in (DEAD, LEFT) or inc < m.inc:
                return False
            if m.status == SUSPECT and inc == m.inc:
                s = self.suspicions.get(name)
                who = accuser or str(u.get("f", ""))
                if s is not None and who and who not in s.confirmers:
                    s.confirmers.add(who)
                    return True
                return False
            m.inc = inc
            self._suspect(now, m, inc, accuser or str(u.get("f", "")))
            self._emit(m)
            return True
        # dead or left
        if inc < m.inc or RANK[m.status] >= RANK[status]:
            return False
        m.inc, m.status, m.since = inc, status, now
        self.suspicions.pop(name, None)
        self._emit(m)
        return True

    def _about_me(self, inc: int, status: str) -> bool:
        me = self.me
        if me.status == LEFT:
            return False
        if (status != ALIVE and inc >= me.inc) or (status == ALIVE and inc > me.inc):
            me.inc = inc + 1
            return True  # caller broadcasts our alive
        return False

    def _suspect(self, now: float, m: Member, inc: int, accuser: str) -> None:
        m.status, m.since = SUSPECT, now
        self.suspicions[m.name] = Suspicion(now, inc, {accuser} if accuser else set())

    def suspect(self, now: float, name: str) -> dict[str, Any] | None:
        """We failed to reach `name`: returns the suspect update to gossip, if any."""
        m = self.by_name.get(name)
        if m is None or m.status not in (ALIVE, SUSPECT):
            return None
        if m.status == SUSPECT:
            # our own failed probe is an independent confirmation (Lifeguard)
            s = self.suspicions.get(name)
            if s is None or self.me.name in s.confirmers:
                return None
            s.confirmers.add(self.me.name)
            return {**m.update(), "f": self.me.name}
        self._suspect(now, m, m.inc, self.me.name)
        self._emit(m)
        return {**m.update(), "f": self.me.name}

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Suspects whose (Lifeguard) timeout ran out become dead; returns the dead updates."""
        out = []
        for name, s in list(self.suspicions.items()):
            m = self.by_name[name]
            if now >= self._deadline(s):
                del self.suspicions[name]
                m.status, m.since = DEAD, now
                self._emit(m)
                out.append(m.update())
        return out

    def _deadline(self, s: Suspicion) -> float:
        n = self.live_count()
        low, high = self.config.suspicion_bounds(n)
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        return s.start + suspicion_timeout(k, max(0, len(s.confirmers) - 1), low, high)

    def next_expiry(self) -> float | None:
        if not self.suspicions:
            return None
        return min(self._deadline(s) for s in self.suspicions.values())

    def drop(self, name: str) -> None:
        """Forget a member now (`pyoverlay forget`)."""
        self.by_name.pop(name, None)
        self.suspicions.pop(name, None)
        self._views.clear()

    def forget_dead(self, now: float) -> None:
        for name, m in list(self.by_name.items()):
            if m.status in (DEAD, LEFT) and now - m.since > self.config.dead_member_ttl:
                del self.by_name[name]
                self._views.clear()
