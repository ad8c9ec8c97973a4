"""PURE: is a silent pyoverlay host still up?  A plugin that is down is not a host that is down.

A host whose pyoverlay stopped answering gossip (suspect or dead, or, after our
own restart, known from members.json and not heard from yet) may still be up:
its containers run and its kernel forwards their VXLAN whatever its plugin
does (a crash, `kill -9`, an upgrade, a slow start).  Its kernel, not its
plugin, tells: a TCP connection to its gossip port is refused (RST: the host
is up, nothing listens) or accepted (the plugin is there, only slow).  A host
that is powered off, crashed or cut off answers nothing.

While such a host answers, the entries of its containers stay in our kernel
(`kept()`: the driver deletes no FDB/ARP entry pointing at its VTEP), though
the gossip hides its rows; `pyoverlay members` shows it as "plugin down, data
path kept".  When it stops answering, the entries go, as for a crash.

Timing: a member is checked from the moment it is suspected, every `interval`,
each check given `timeout`; the suspicion lasts at least 2.5 s, so when it
ends the answer is in, and purging a crashed host takes no longer than before.

A host that answered (or is presumed up after our own restart) is given up
only after MISSES checks in a row went unanswered (a check that times out is
followed at once by the next: one `timeout` later than a single miss, 1 s):
on a busy machine one
check can time out while the host is up, and dropping its entries for that
one miss cuts a live data path until the next answer, about half a second
(the likely cause of 24 lost replies of a 20 ms ping in the IPsec tier's
kill -9 test in CI). A host suspected in this life that never answered is
not kept on its first miss, as before.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

MISSES = 2  # unanswered checks in a row that end keeping a host that answered


@dataclass
class Silent:
    addr: str  # "ip:port" of its gossip socket
    vtep: str
    next_at: float
    pending: bool = False
    # the latest completed check; None: none yet, then `presumed` holds (a host of our
    # last life is presumed up until a check says otherwise: its containers' entries in
    # our kernel stay; a member just suspected is not: a crash is purged in time)
    answering: bool | None = None
    presumed: bool = False
    misses: int = 0  # unanswered checks since the last answer


class HostChecks:
    def __init__(self, interval: float = 0.5, timeout: float = 1.0) -> None:
        self.interval = interval
        self.timeout = timeout
        self.hosts: dict[str, Silent] = {}

    def watch(
        self, now: float, silent: dict[str, tuple[str, str]], presumed: Collection[str] = ()
    ) -> bool:
        """The hosts to check from now on (name -> (gossip addr, vtep)); a new one is due at
        once, one no longer silent is forgotten; those in `presumed` count as answering
        until their first check is done. True if `kept()` changed."""
        before = self.kept()
        for name in [n for n in self.hosts if n not in silent]:
            del self.hosts[name]
        for name, (addr, vtep) in silent.items():
            cur = self.hosts.get(name)
            if cur is None or cur.addr != addr:
                self.hosts[name] = Silent(addr, vtep, now, presumed=name in presumed)
            else:
                cur.vtep = vtep
                cur.presumed = cur.presumed and name in presumed
        return self.kept() != before

    def due(self, now: float) -> list[tuple[str, str]]:
        """Checks to start now: (name, gossip addr); one at a time per host."""
        out = []
        for name, h in self.hosts.items():
            if not h.pending and now >= h.next_at:
                h.pending = True
                h.next_at = now + self.interval
                out.append((name, h.addr))
        return out

    def result(self, now: float, name: str, answered: bool) -> bool:
        """A check finished; True if `kept()` changed."""
        h = self.hosts.get(name)
        if h is None:
            return False
        h.pending = False
        before = self._kept(h)
        if answered:
            h.answering, h.misses = True, 0
        else:
            h.misses += 1
            # one miss is enough for a host that never answered nor is presumed up
            if h.misses >= MISSES or (h.answering is None and not h.presumed):
                h.answering = False
        return self._kept(h) != before

    @staticmethod
    def _kept(h: Silent) -> bool:
        return bool(h.vtep) and (h.answering if h.answering is not None else h.presumed)

    def kept(self) -> dict[str, str]:
        """name -> VTEP of the silent hosts whose latest check answered (or, before the
        first, that are presumed up)."""
        return {n: h.vtep for n, h in self.hosts.items() if self._kept(h)}

    def next_deadline(self) -> float | None:
        times = [h.next_at for h in self.hosts.values() if not h.pending]
        return min(times) if times else None
