"""PURE: updates waiting to ride on outgoing packets, freshest first, O(taken) per packet.

Every update is sent `retransmits` times; a packet takes the updates with the
most sends left first (a new update spreads before old ones finish), up to
its byte budget.  Items sit in buckets by sends left (at most ~16 buckets),
so filling a packet costs the items it takes, not the queue's length: during
a join storm of 1,000 members the queue holds hundreds of updates and every
ping, ack and gossip packet is filled from it.  A newer update for the same
key replaces the queued one.  A network row's update goes only to hosts in
that network (`take(nets=...)`); skipping the others costs what it skips.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, ...]
SMALLEST = 24  # no update is smaller than this many bytes: stop looking below it


@dataclass
class Item:
    kind: str  # "m" member update, "r" row
    payload: dict[str, Any]
    size: int
    left: int
    net: str | None = None  # a network row: only for hosts in that network (scoping.py)


class Broadcasts:
    def __init__(self) -> None:
        self._items: dict[Key, Item] = {}
        self._buckets: dict[int, dict[Key, None]] = {}  # sends left -> keys, oldest first
        self._nets: Counter[str] = Counter()  # network -> items queued for it

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def get(self, key: Key) -> Item | None:
        return self._items.get(key)

    def nets(self) -> list[str]:
        """Networks with updates waiting."""
        return list(self._nets)

    def put(self, key: Key, item: Item) -> None:
        self.discard(key)
        if item.left > 0:
            self._items[key] = item
            self._buckets.setdefault(item.left, {})[key] = None
            if item.net is not None:
                self._nets[item.net] += 1

    def discard(self, key: Key) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            bucket = self._buckets[old.left]
            del bucket[key]
            if not bucket:
                del self._buckets[old.left]
            if old.net is not None:
                self._nets[old.net] -= 1
                if not self._nets[old.net]:
                    del self._nets[old.net]

    def discard_net(self, net: str, keep: Callable[[Item], bool]) -> None:
        """Drop the queued updates of `net`, except those `keep` wants."""
        if net in self._nets:
            for key in [k for k, i in self._items.items() if i.net == net and not keep(i)]:
                self.discard(key)

    def items(self) -> list[tuple[Key, Item]]:
        """Every queued update (a snapshot: the caller may change the queue)."""
        return list(self._items.items())

    def spent(self, key: Key) -> None:
        """One send of `key` done; it leaves the queue after its last."""
        item = self._items.get(key)
        if item is not None:
            self.discard(key)
            item.left -= 1
            self.put(key, item)

    def take(
        self,
        budget: int,
        first: Key | None = None,
        count: bool = True,
        nets: Callable[[str], bool] = lambda net: True,
    ) -> list[Item]:
        """Items for one packet, `first` ahead of the others; count=False: a free ride
        (the send does not use up one of the item's retransmits); `nets`: which
        networks' rows the receiver takes (updates of other networks stay queued)."""
        chosen: list[tuple[Key, Item]] = []
        if first is not None and first in self._items and self._items[first].size <= budget:
            chosen.append((first, self._items[first]))
            budget -= self._items[first].size
        for left in sorted(self._buckets, reverse=True):
            if budget < SMALLEST:
                break
            for key in self._buckets[left]:
                item = self._items[key]
                if key == first or item.size > budget:
                    continue
                if item.net is not None and not nets(item.net):
                    continue
                chosen.append((key, item))
                budget -= item.size
                if budget < SMALLEST:
                    break
        for key, item in chosen if count else ():
            self.discard(key)
            item.left -= 1
            self.put(key, item)
        return [item for _, item in chosen]
