"""PURE anti-replay for gossip: every sealed message carries a stamp, checked once.

A stamp is (sender, epoch, counter, sent_ms), inside the AES-GCM box so it
cannot be forged without a key:

* epoch   the sender's process start, wall-clock ms: a restarted sender
          starts a higher epoch, and everything from an older one is refused;
* counter one per message, per process (UDP packets and TCP frames share it);
          a window of the last WINDOW counters is remembered per sender, so
          reordered datagrams pass and a duplicate is refused;
* sent_ms the sender's wall clock when sending: a message older than
          MAX_AGE_S (or that far in the future) is refused, which bounds what
          a receiver that has just restarted (and remembers no counters) can
          be made to accept.

Hosts whose clocks differ by more than MAX_AGE_S cannot gossip; the counter
`dropped_stale` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW = 4096
MAX_AGE_S = 300.0
KEYS = ("_s", "_e", "_c", "_t")  # where a stamp lives in a message


@dataclass(frozen=True)
class Stamp:
    sender: str
    epoch: int
    counter: int
    sent_ms: int

    def into(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {**msg, "_s": self.sender, "_e": self.epoch, "_c": self.counter, "_t": self.sent_ms}

    @classmethod
    def of(cls, msg: dict[str, Any]) -> Stamp | None:
        try:
            s, e, c, t = (msg[k] for k in KEYS)
        except KeyError:
            return None
        if not (isinstance(s, str) and all(type(x) is int for x in (e, c, t))):
            return None
        return cls(s, e, c, t)


class StampSource:
    """The sending side: one epoch per process, one counter per message."""

    def __init__(self, sender: str, epoch_ms: int) -> None:
        self.sender = sender
        self.epoch = epoch_ms
        self.counter = 0

    def next(self, now_ms: int) -> Stamp:
        self.counter += 1
        return Stamp(self.sender, self.epoch, self.counter, now_ms)


@dataclass
class _Seen:
    epoch: int
    top: int = 0
    recent: set[int] = field(default_factory=set)


class ReplayGuard:
    """The receiving side: accepts each (sender, epoch, counter) at most once."""

    def __init__(self, window: int = WINDOW, max_age_s: float = MAX_AGE_S) -> None:
        self.window = window
        self.max_age_ms = int(max_age_s * 1000)
        self.seen: dict[str, _Seen] = {}

    def check(self, stamp: Stamp, now_ms: int) -> str | None:
        """None if fresh (and now remembered), else why it is refused: stale or replay."""
        if abs(now_ms - stamp.sent_ms) > self.max_age_ms:
            return "stale"
        s = self.seen.get(stamp.sender)
        if s is None or stamp.epoch > s.epoch:
            s = self.seen[stamp.sender] = _Seen(stamp.epoch)
        elif stamp.epoch < s.epoch:
            return "replay"
        if stamp.counter <= s.top - self.window or stamp.counter in s.recent:
            return "replay"
        s.recent.add(stamp.counter)
        if stamp.counter > s.top:
            s.top = stamp.counter
            if len(s.recent) > 2 * self.window:
                floor = s.top - self.window
                s.recent = {c for c in s.recent if c > floor}
        return None
