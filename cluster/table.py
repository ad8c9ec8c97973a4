"""PURE replicated table, modelled on Docker's networkdb.

A row is (scope, key) -> value, owned by the node that wrote it.  Scopes
name a table and a partition of it, e.g. "peer/4097" (VNI 4097's endpoints)
or "ipam/10.1.0.0/24"; any per-network record can ride on it later.

* Versions are (ltime, owner): a hybrid Lamport clock, max(clock + 1, wall
  ms) on every local write, so a restarted node's new writes still win.
  merge() keeps the higher version, so it is commutative, associative and
  idempotent: every order of the same updates ends in the same table.
* A delete is a tombstone (value None) that beats older writes and is
  reaped `tombstone_ttl` after it was written (the residual time travels
  with it, as in networkdb).
* Rows of an owner that is dead are hidden, not deleted: if it comes back
  they are visible again at once; after `dead_rows_ttl` they are dropped.
Visible changes become RowEvents for the node's user (the driver).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    scope: str
    key: str
    owner: str
    ltime: int
    value: dict[str, Any] | None
    reap_at: float | None = None

    @property
    def version(self) -> tuple[int, str]:
        return (self.ltime, self.owner)

    def wire(self, now: float) -> dict[str, Any]:
        d: dict[str, Any] = {"s": self.scope, "k": self.key, "o": self.owner, "l": self.ltime}
        if self.value is None:
            d["r"] = max(0.0, round((self.reap_at or now) - now, 3))
        else:
            d["v"] = self.value
        return d


@dataclass(frozen=True)
class RowEvent:
    scope: str
    key: str
    owner: str
    value: dict[str, Any] | None  # None: the row is gone (deleted, or its owner died)


class Table:
    def __init__(self, me: str, tombstone_ttl: float) -> None:
        self.me = me
        self.tombstone_ttl = tombstone_ttl
        self.rows: dict[tuple[str, str], Row] = {}
        self.scopes: dict[str, dict[str, Row]] = {}  # the same rows by scope, then key
        self.generations: dict[str, int] = {}  # scope -> bumped at every change of its rows
        self.hidden: set[str] = set()  # owners currently dead
        self.clock = 0
        self.events: list[RowEvent] = []

    def _visible(self, row: Row | None) -> dict[str, Any] | None:
        if row is None or row.value is None or row.owner in self.hidden:
            return None
        return row.value

    def _put(self, row: Row) -> None:
        k = (row.scope, row.key)
        before = self.rows.get(k)
        old = self._visible(before)
        self.rows[k] = row
        self.scopes.setdefault(row.scope, {})[row.key] = row
        self._bump(row.scope)
        new = self._visible(row)
        if old != new:
            owner = row.owner if new is not None else (before.owner if before else row.owner)
            self.events.append(RowEvent(row.scope, row.key, owner, new))

    def write(
        self,
        now: float,
        scope: str,
        key: str,
        value: dict[str, Any] | None,
        stamp: int | None = None,
    ) -> Row:
        """A local write (or delete, value None) by this node.

        `stamp` is the wall clock in ms (the hybrid part of the version, so a
        restarted writer still wins); `now` may be a monotonic clock.
        """
        self.clock = max(self.clock + 1, int(now * 1000) if stamp is None else stamp)
        reap = now + self.tombstone_ttl if value is None else None
        row = Row(scope, key, self.me, self.clock, value, reap)
        self._put(row)
        return row

    def merge(self, now: float, d: dict[str, Any]) -> Row | None:
        """Merge a row from the wire; returns it if it was newer (to re-gossip)."""
        try:
            scope, key, owner, ltime = str(d["s"]), str(d["k"]), str(d["o"]), int(d["l"])
            value = d.get("v")
            if value is not None and not isinstance(value, dict):
                return None
            residual = float(d.get("r", self.tombstone_ttl))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        self.clock = max(self.clock, ltime)
        cur = self.rows.get((scope, key))
        if cur is not None and cur.version >= (ltime, owner):
            return None
        reap = now + min(residual, self.tombstone_ttl) if value is None else None
        row = Row(scope, key, owner, ltime, value, reap)
        self._put(row)
        return row

    def set_owner_dead(self, owner: str, dead: bool) -> None:
        if dead == (owner in self.hidden):
            return
        rows = [r for r in self.rows.values() if r.owner == owner]
        before = {(r.scope, r.key): self._visible(r) for r in rows}
        if dead:
            self.hidden.add(owner)
        else:
            self.hidden.discard(owner)
        for scope in {r.scope for r in rows}:
            self._bump(scope)
        for r in rows:
            after = self._visible(r)
            if before[(r.scope, r.key)] != after:
                self.events.append(RowEvent(r.scope, r.key, owner, after))

    def _bump(self, scope: str) -> None:
        self.generations[scope] = self.generations.get(scope, 0) + 1

    def generation(self, scope: str) -> int:
        """Changes whenever a row of `scope` changes (a cache of derived data checks it)."""
        return self.generations.get(scope, 0)

    def _delete(self, k: tuple[str, str]) -> None:
        self._bump(k[0])
        del self.rows[k]
        rows = self.scopes[k[0]]
        del rows[k[1]]
        if not rows:
            del self.scopes[k[0]]

    def drop_owner(self, owner: str) -> None:
        """Forget every row of an owner dead for long (it is hidden already)."""
        self.drop_where(lambda r: r.owner == owner)

    def drop_where(self, gone: Callable[[Row], bool]) -> None:
        """Forget rows without an event (a network this host no longer takes part in)."""
        for k in [k for k, r in self.rows.items() if gone(r)]:
            self._delete(k)

    def reap(self, now: float) -> None:
        self.drop_where(lambda r: r.value is None and (r.reap_at or 0) <= now)

    def visible(self, scope: str | None = None) -> list[Row]:
        """Visible rows of one scope (exactly: "peer/1" is not "peer/10"), or of all."""
        rows = self.rows.values() if scope is None else self.scopes.get(scope, {}).values()
        return [r for r in rows if self._visible(r) is not None]

    def dump(
        self, now: float, keep: Callable[[Row], bool] = lambda r: True
    ) -> list[dict[str, Any]]:
        return [r.wire(now) for r in self.rows.values() if keep(r)]
