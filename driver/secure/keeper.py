"""Keeps the kernel's IPsec SAs/policies and the guard table as sa.py and guard.py decide.

(~370 lines, one loop: reading the kernel, numbering, installing and reporting share
its state; what to do is decided in sa.py and guard.py.)

`sync()` is the only entry: it is called when a network appears or goes, on
every change of the `ipsec` rows or the membership, when the keyring is
reloaded, and every `tick` seconds (rotation and rekey are checked there).
One lock serialises it. The kernel is read back every time, so a restart
(kill -9) picks up the SAs it left running, and a hand-deleted SA is put
back (with a new SA number: a used key is never installed twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

import structlog

from pyoverlay.core.store import JsonDocument
from pyoverlay.driver.core.directory import PeerDirectory
from pyoverlay.driver.core.interfaces import RuleTables
from pyoverlay.driver.secure import guard
from pyoverlay.driver.secure import sa as ipsec
from pyoverlay.driver.secure.sa import InstalledSa, Published, Sending

log = structlog.get_logger("pyoverlay.encryption")

MAX_HARD_PACKETS = 2**32 - 2**16  # the kernel drops the SA before the sequence number wraps
GUARD_REFRESH = 30.0  # seconds: the guard table is re-applied at least this often (drift)
READ_EVERY = 30.0  # seconds between reads of the kernel's SAs when nothing happens (drift)
LOGGED = 8  # peers whose SA number a log line shows (the count is always there)


class XfrmTables(Protocol):
    """driver/xfrm.py (the kernel) or a fake in tests."""

    async def states(self) -> list[InstalledSa]: ...

    async def policies(self) -> list[tuple[IPv4Address, IPv4Address, int]]: ...

    async def batch(self, lines: Sequence[str]) -> list[str]: ...

    async def probe(self) -> str | None: ...


@dataclass
class Inputs:
    """Where the keeper reads the world (set by the plugin at start)."""

    ring: Callable[[], Sequence[bytes]] = lambda: ()
    members: Callable[[], Iterable[IPv4Address]] | None = None  # None: no admission check
    encrypted_vnis: Callable[[], Iterable[int]] = lambda: ()
    vnis: Callable[[], Iterable[int]] = lambda: ()  # every pyoverlay network's (admission)
    any_network: Callable[[], bool] = lambda: False
    # the routing mesh forwards connections of a service on an encrypted network between
    # nodes: SAs with every peer and one mesh policy each, even with no such network here;
    # None: not known yet (the mesh has no view since the plugin synced): nothing of the
    # kernel's is removed meanwhile (a restart must not cut the hop it still marks)
    mesh: Callable[[], bool | None] = lambda: False


@dataclass
class Report:
    """What `pyoverlay status` shows (the last sync)."""

    at: float = 0.0
    errors: list[str] = field(default_factory=list)
    sending: dict[str, dict[str, Any]] = field(default_factory=dict)
    receiving: dict[str, dict[str, Any]] = field(default_factory=dict)


class Encryption:
    def __init__(
        self,
        xfrm: XfrmTables,
        tables: RuleTables,
        state_file: Path,
        local: IPv4Address,
        port: int,
        node: str,
        rotation: float = ipsec.DEFAULT_ROTATION,
        rekey_packets: int = ipsec.DEFAULT_REKEY_PACKETS,
    ) -> None:
        self.xfrm = xfrm
        self.tables = tables
        self.doc = JsonDocument(state_file)
        self.local = local
        self.port = port
        self.node = node
        self.rotation = rotation
        self.rekey_packets = rekey_packets
        self.inputs = Inputs()
        self.directory: PeerDirectory | None = None
        self.salt = ""
        self.sending: dict[IPv4Address, Sending] = {}
        self.unsupported: str | None = None  # why this kernel cannot encrypt (probe)
        self.report = Report()
        # False until the cluster's table was synced once (as OverlayDriver.prune_peers):
        # until then nothing is removed and the admission set only grows, so a restarted
        # plugin does not cut traffic it cannot see yet
        self.prune = False
        self.admitted: set[IPv4Address] = set()
        self._applied: list[dict[str, Any]] = []
        self._applied_at = 0.0
        self._published: dict[str, Any] = {}
        self.receiving_around: dict[str, int] = {}  # peer VTEP -> its tx we installed around
        self._maybe_sas = True  # ours may be in the kernel (unknown at start)
        self._lock = asyncio.Lock()
        self.wake = asyncio.Event()
        # the kernel is read (two `ip` runs) when something changed, when an SA may be due
        # for its rekey, and every READ_EVERY seconds, not at every tick
        self.next_read = 0.0
        self._counts: dict[int, tuple[int, float]] = {}  # outbound spi -> (packets, when)
        self.reads = 0
        self.installed = 0  # SAs of ours in the kernel at the last read

    @property
    def hard_packets(self) -> int:
        """The kernel's own cap per SA: just below the 32-bit sequence wrap, whatever the
        rekey limit (so an SA the plugin cannot replace while it is down keeps working
        until then, and stops, never wraps, after)."""
        return MAX_HARD_PACKETS

    async def start(self) -> None:
        """Probe the kernel; keep the salt and SA numbers if the kernel still has our
        outbound SAs (a plugin restart), else start a new salt (nothing it keys was used)."""
        self.unsupported = await self.xfrm.probe()
        if self.unsupported:
            log.warning("encrypted networks unavailable", error=self.unsupported)
            return
        d = self.doc.load()
        ours = [s for s in await self.xfrm.states() if s.src == self.local]
        if ours and isinstance(d.get("salt"), str):
            self.salt = str(d["salt"])
            for peer, (n, since, kid) in (d.get("sending") or {}).items():
                self.sending[IPv4Address(peer)] = Sending(int(n), float(since), str(kid))
        else:
            self.salt = os.urandom(8).hex()
            self._save()
        log.info("ipsec ready", salt=self.salt, sending=len(self.sending))

    def _save(self) -> None:
        self.doc.save(
            {
                "salt": self.salt,
                "sending": {str(p): [s.n, s.since, s.key_id] for p, s in self.sending.items()},
            }
        )

    def publish(self) -> None:
        """Our row, when it changed (a write wakes every host's keeper, ours included)."""
        if self.directory is not None and self.salt:
            row = Published(
                self.local,
                self.salt,
                {str(p): s.n for p, s in self.sending.items()},
                tuple(ipsec.key_id(k) for k in self.inputs.ring()),
                dict(self.receiving_around),
            ).to_json()
            if row != self._published:
                self.directory.publish(ipsec.ROW_SCOPE, self.node, row)
                self._published = row

    def published(self) -> dict[IPv4Address, Published]:
        if self.directory is None:
            return {}
        out = {}
        for _key, value, _v in self.directory.rows(ipsec.ROW_SCOPE):
            p = Published.from_json(value)
            if p is not None and p.vtep != self.local:
                out[p.vtep] = p
        return out

    async def sync(self, now: float | None = None) -> list[str]:
        """Make the kernel match; the errors (also kept in `report`)."""
        async with self._lock:
            try:
                errors = await self._sync(time.time() if now is None else now)
            except Exception as exc:  # reported, retried at the next tick
                errors = [f"{type(exc).__name__}: {exc}"]
            self.report.errors, self.report.at = errors, time.time()
            for e in errors:
                log.error("ipsec sync", error=e)
            return errors

    async def drop_counters(self) -> dict[str, int]:
        """The guard table's drop counters, read from the kernel when asked (status), not
        at every tick; empty while there is no table or it cannot be read (logged)."""
        try:
            listing = await self.tables.list_table(None, "inet", guard.GUARD_TABLE)
        except Exception as exc:  # status must still answer
            log.error("guard counters", error=f"{type(exc).__name__}: {exc}")
            return {}
        return guard.guard_counters(listing)

    async def _sync(self, now: float) -> list[str]:
        vnis = sorted(set(self.inputs.encrypted_vnis()))
        mesh = self.inputs.mesh()
        # removals wait until both the cluster's table and the mesh's view are known
        may_remove = self.prune and mesh is not None
        if not self.inputs.any_network() and not mesh:
            if may_remove:
                await self._remove_all()
            return []
        members = None if self.inputs.members is None else set(self.inputs.members())
        if members is not None:
            self.admitted = members if self.prune else self.admitted | members
            members = self.admitted
        cmds = guard.guard_commands(self.port, vnis, members, self.inputs.vnis())
        if cmds != self._applied or now - self._applied_at > GUARD_REFRESH:
            await self.tables.apply(None, cmds)  # one transaction: never a moment without rules
            self._applied, self._applied_at = cmds, now
        if self.unsupported or not self.salt:
            return []  # no ESP here: nothing of ours can be in the kernel
        if not vnis and not mesh:
            if may_remove:
                await self._remove_sas()
            return []
        ring = list(self.inputs.ring())
        if not ring:
            return ["encrypted networks need the cluster key (--gossip-key-file)"]
        installed = await self.xfrm.states()
        self.reads += 1
        self.installed = len(installed)
        self.next_read = now + self._read_interval(installed, now)
        by_ident = {s.ident: s for s in installed}
        peers = self.published()
        known = members if members is not None else set(peers)
        by_id = {ipsec.key_id(k): k for k in ring}
        changed = False
        usable: set[IPv4Address] = set()  # peers we share a key with
        for vtep, peer in sorted(peers.items()):
            key = ipsec.send_key(ring, peer)
            if key is None:
                continue  # it holds none of our keys (rotated out of the cluster)
            usable.add(vtep)
            cur = self.sending.get(vtep)
            sa = (
                ipsec.derive(by_id[cur.key_id], self.local, vtep, self.salt, cur.n)
                if cur and cur.key_id in by_id
                else None
            )
            nxt = ipsec.next_sending(
                cur,
                by_ident.get(sa.ident) if sa else None,
                ipsec.key_id(key),
                now,
                self.rotation,
                self.rekey_packets,
                ipsec.ceiling(peer, self.local),
            )
            if nxt != cur:
                self.sending[vtep] = nxt
                changed = True
        if changed:
            self._save()  # before the kernel sees the new SA: n must never go back
        sending = {p: s for p, s in self.sending.items() if p in usable}
        inbound = ipsec.wanted_inbound(ring, self.local, peers.values())
        outbound = ipsec.wanted_outbound(ring, self.local, self.salt, sending)
        # members whose rows are hidden right now (suspected dead, restarting), or anyone
        # before the first sync
        keep = set(known) - set(peers) - {self.local}  # (and not a peer without our keys)
        if not self.prune:
            keep |= {s.src for s in installed} | {s.dst for s in installed}
        changes = ipsec.diff_sas(inbound + outbound, installed, keep)
        lines = [ipsec.state_add_line(sa, self.hard_packets) for sa in changes.add]
        have_pol = set(await self.xfrm.policies())
        want_pol = {(self.local, p, self.port) for p in sending}
        if mesh:
            want_pol |= {(self.local, p, ipsec.MESH_PORT) for p in sending}
        lines += [
            ipsec.policy_line("update", loc, p, port)
            for loc, p, port in sorted(want_pol - have_pol)
        ]
        lines += [ipsec.state_delete_line(s) for s in changes.delete if s.src == self.local]
        lines += [ipsec.state_delete_line(s) for s in changes.delete if s.src != self.local]
        lines += [
            ipsec.policy_line("delete", loc, p, port)
            for loc, p, port in sorted(have_pol - want_pol)
            if p not in keep and self.prune and (port != ipsec.MESH_PORT or mesh is False)
        ]
        if lines:
            self._maybe_sas = True
        errors = await self.xfrm.batch(lines)
        if not errors:  # installed: receivers say what they hold, so senders stay inside it
            self.receiving_around = {
                str(p.vtep): p.tx.get(str(self.local), 0) for p in peers.values()
            }
        self.publish()
        if changes:
            log.info(
                "ipsec sas changed",
                added=len(changes.add),
                deleted=len(changes.delete),
                sending=dict(list({str(p): s.n for p, s in sending.items()}.items())[:LOGGED]),
                peers=len(sending),
            )
        self._report(outbound, inbound, await self.xfrm.states() if changes else installed)
        return errors

    def _report(
        self, outbound: Sequence[ipsec.Sa], inbound: Sequence[ipsec.Sa], now: Sequence[InstalledSa]
    ) -> None:
        have = {s.ident: s for s in now}
        self.report.sending = {
            str(sa.dst): {
                "n": sa.n,
                "spi": f"{sa.spi:#010x}",
                "key": sa.key_id,
                "packets": have[sa.ident].packets if sa.ident in have else None,
                "since": self.sending[sa.dst].since,
            }
            for sa in outbound
        }
        recv: dict[str, dict[str, Any]] = {}
        for sa in inbound:
            r = recv.setdefault(str(sa.src), {"sas": 0, "installed": 0, "packets": 0, "active": []})
            r["sas"] += 1
            got = have.get(sa.ident)
            if got is not None:
                r["installed"] += 1
                r["packets"] += got.packets
                if got.packets:
                    r["active"].append({"n": sa.n, "spi": f"{sa.spi:#010x}", "key": sa.key_id})
        self.report.receiving = recv

    async def _remove_sas(self) -> None:
        if not self._maybe_sas:
            return  # nothing installed since the last clean-up (no subprocess per tick)
        installed = await self.xfrm.states()
        pols = await self.xfrm.policies()
        lines = [ipsec.policy_line("delete", loc, p, port) for loc, p, port in pols]
        lines += [ipsec.state_delete_line(s) for s in installed]
        if lines:
            await self.xfrm.batch(lines)
            log.info("ipsec sas removed", sas=len(installed), policies=len(pols))
        self._maybe_sas = False

    async def _remove_all(self) -> None:
        """No pyoverlay network left on this host: no guard table, no SA."""
        if await self.tables.list_table(None, "inet", guard.GUARD_TABLE) is not None:
            await self.tables.apply(None, guard.delete_guard())
        if not self.unsupported:
            await self._remove_sas()

    def _read_interval(self, installed: Sequence[InstalledSa], now: float) -> float:
        """Seconds until the kernel must be read again: READ_EVERY, or sooner if at the
        packet rate seen since the last read an outbound SA would reach its rekey limit
        (read at half the time left: a fast flow is caught well before the limit)."""
        out = [s for s in installed if s.src == self.local]
        counts = {s.spi: (s.packets, now) for s in out}
        wait = READ_EVERY
        for s in out:
            before = self._counts.get(s.spi)
            if before is None or now <= before[1] or s.packets <= before[0]:
                continue
            rate = (s.packets - before[0]) / (now - before[1])
            wait = min(wait, max(0.0, self.rekey_packets - s.packets) / rate / 2)
        self._counts = counts
        return max(wait, 0.5)

    def _rotation_due(self, now: float) -> bool:
        return any(now - s.since >= self.rotation for s in self.sending.values())

    async def run(self, tick: float) -> None:
        """The background loop: sync on a wake-up (a network, a row, a member or the keys
        changed), when an SA is due for rotation or may be for its rekey, and every
        READ_EVERY seconds (drift); otherwise nothing, not even a read of the kernel."""
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick)
                woken = True
                self.wake.clear()  # (only then: a wake-up set since the timeout stays)
            now = time.time()
            if woken or now >= self.next_read or self._rotation_due(now):
                await self.sync(now)
