"""The asyncio shell around a GossipNode: timers, a transport (transport.py), host checks.
(~360 lines: the node's timers, the host checks and the saved life share one
lifecycle; split, each would need the others' state.)

The node decides (node.py and its layers); this only moves its messages
through the transport, calls its timer, and saves its incarnation and replay
epoch (`life`) before anything carrying them leaves. Timers run on the
monotonic clock; only row versions and replay stamps use the wall clock.

The runtime is also the driver's PeerDirectory: publish/withdraw/rows go to
the node's replicated table, and visible row changes come back through
`on_rows(scopes)` (a non-blocking callback). Members that fall silent are
checked (hostcheck.py): `kept_vteps()` names those whose host still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.hostcheck import HostChecks
from pyoverlay.cluster.keyring import Keyring
from pyoverlay.cluster.membership import DEAD, SUSPECT, MemberEvent
from pyoverlay.cluster.node import GossipNode
from pyoverlay.cluster.replay import StampSource
from pyoverlay.cluster.table import RowEvent
from pyoverlay.cluster.transport import Transport, UdpTcpTransport, split_addr, wall_ms
from pyoverlay.core.errors import StateError
from pyoverlay.core.store import JsonDocument
from pyoverlay.core.tasks import TaskSet

log = structlog.get_logger("pyoverlay.gossip")
Rpc = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
HOST_CHECK_TIMEOUT = 1.0  # a silent host's kernel answers a TCP connection within this


def _int(value: object, default: int) -> int:
    return value if type(value) is int and value >= 0 else default


class GossipRuntime:
    def __init__(
        self,
        name: str,
        bind_host: str,
        port: int,
        keyring: Keyring,
        config: GossipConfig,
        meta: dict[str, str] | None = None,
        on_rows: Callable[[set[str]], None] | None = None,
        on_members: Callable[[list[MemberEvent]], None] | None = None,
        life: JsonDocument | None = None,
        expected: dict[str, tuple[str, str]] | None = None,
        on_kept: Callable[[], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.keyring = keyring
        self.config = config
        self.bind_host = bind_host
        self.port = port
        # This life's incarnation and replay epoch, both above the last life's (saved in
        # `life`): peers that declared the last life dead take our first "alive" at once,
        # and a wall clock stepped back (NTP at boot, a VM restore) does not make our
        # messages look like replays of the last life's.
        self.life = life
        last = life.load() if life is not None else {}
        inc = _int(last.get("incarnation"), -1) + 1
        epoch = max(_int(last.get("epoch_ms"), 0) + 1, wall_ms())
        self.node = GossipNode(
            name, f"{bind_host}:{port}", config, random.Random(), time.monotonic(), meta, inc
        )
        self.stamps = StampSource(name, epoch)
        self.transport: Transport = transport or UdpTcpTransport(
            bind_host,
            port,
            keyring,
            self.stamps,
            config.packet_budget * 2,
            config.stream_timeout,
            banned=lambda sender: sender in self.node.members.banned,
        )
        self._saved_inc = -1
        self._save_life()
        # silent hosts (hostcheck.py): members suspect or dead, and the hosts of the last
        # life (`expected`: name -> (gossip addr, vtep)) not heard from yet in this one
        # (at most every HOST_CHECK_TIMEOUT whatever the probe interval: a check that
        # times out is followed at once by the next, which hostcheck.py's timing assumes)
        self.checks = HostChecks(min(config.probe_interval, HOST_CHECK_TIMEOUT), HOST_CHECK_TIMEOUT)
        self.expected = dict(expected or {})
        self.on_kept = on_kept or (lambda: None)
        self._checks_wake = asyncio.Event()
        # set at the first full state exchange with a live member (either way)
        self.synced = asyncio.Event()
        self.on_rows = on_rows or (lambda scopes: None)
        self.on_members = on_members or (lambda events: None)
        self.tasks = TaskSet()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()  # set after every push-pull reply
        self._armed = 0.0  # when the timer loop wakes up next (node.next_deadline)
        self._loop_task: asyncio.Task[None] | None = None
        self._rpc: dict[str, Rpc] = {}

    # -- PeerDirectory -------------------------------------------------------

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        self.node.publish(time.monotonic(), scope, key, value, wall_ms())
        self._after()

    def withdraw(self, scope: str, key: str) -> None:
        self.node.withdraw(time.monotonic(), scope, key, wall_ms())
        self._after()

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        return [(r.key, r.value or {}, r.version) for r in self.node.table.visible(scope)]

    def generation(self, scope: str) -> int:
        return self.node.table.generation(scope)

    def join_network(self, net: str) -> None:
        self.node.join_network(time.monotonic(), net, wall_ms())
        self._after()

    def leave_network(self, net: str) -> None:
        self.node.leave_network(time.monotonic(), net, wall_ms())
        self._after()

    async def network_ready(self, net: str, timeout: float) -> bool:
        """Wait (at most `timeout`) until `net`'s rows have been fetched from a member in it."""
        deadline = time.monotonic() + timeout
        while not self.node.network_ready(net, self.synced.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), min(left, 0.05))
        return True

    def rows_complete(self, net: str) -> bool:
        return self.node.network_ready(net)

    def kept_vteps(self) -> frozenset[str]:
        """VTEPs of hosts whose pyoverlay is silent but whose kernel answers: the entries
        of their containers stay (hostcheck.py)."""
        return frozenset(self.checks.kept().values())

    # -- silent hosts ----------------------------------------------------------------

    def _silent(self) -> dict[str, tuple[str, str]]:
        members = self.node.members
        out = {
            name: where
            for name, where in self.expected.items()
            if name not in members.by_name and name not in members.banned
        }
        for m in members.others(SUSPECT, DEAD):
            out[m.name] = (m.addr, m.meta.get("vtep", ""))
        return out

    def _watch_silent(self) -> None:
        if self.checks.watch(time.monotonic(), self._silent(), presumed=self.expected):
            self.on_kept()
        self._checks_wake.set()

    async def _host_checks(self) -> None:
        while True:
            now = time.monotonic()
            for name, addr in self.checks.due(now):
                self.tasks.spawn(f"host-check {name}", self._check_host(name, addr))
            at = self.checks.next_deadline()
            self._checks_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if at is None else max(0.0, at - now)):
                    await self._checks_wake.wait()

    async def _check_host(self, name: str, addr: str) -> None:
        """Does the host's kernel answer a TCP connection to its gossip port (accepted, or
        refused: nothing listens)? Nothing is sent: the other side counts a host check."""
        answered = await self.transport.host_answers(addr, HOST_CHECK_TIMEOUT)
        if self.checks.result(time.monotonic(), name, answered):
            log.info("silent host", node=name, answers=answered, data_path_kept=answered)
            self.on_kept()
        self._checks_wake.set()

    # -- request/response for other subsystems (cluster-wide IPAM) -------------

    def register_rpc(self, kind: str, handler: Rpc) -> None:
        """`await handler(body) -> reply body` answers `call(addr, kind, body)`; it must
        not block the event loop (it may wait, e.g. for its state to be on disk)."""
        self._rpc[kind] = handler

    def members(self) -> list[tuple[str, str, str]]:
        """(name, gossip address, status) of every member known, this host included."""
        return [(m.name, m.addr, m.status) for m in self.node.members.by_name.values()]

    def forget(self, name: str) -> None:
        """A host removed for good: drop it and its rows, refuse whatever it still sends."""
        self.node.members.banned.add(name)
        self.node.members.drop(name)
        self.node.table.set_owner_dead(name, True)
        self.node.table.drop_owner(name)
        self.expected.pop(name, None)
        self._watch_silent()  # its data path is not kept any more
        self._after()

    async def call(
        self, addr: str, kind: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """One authenticated request/response over TCP; None if the host does not answer."""
        reply = await self.transport.exchange(
            addr, {"t": "rpc", "kind": kind, "body": body}, timeout
        )
        if reply is None or reply.get("t") != "rpcr" or not isinstance(reply.get("body"), dict):
            return None
        body_out: dict[str, Any] = reply["body"]
        return body_out

    # -- life cycle ------------------------------------------------------------

    async def start(self, seeds: Iterable[str]) -> None:
        await self.transport.start(self._packet_in, self._stream_in)
        known = [self._normalise(s) for s in seeds]
        self.node.start(time.monotonic(), known)
        if not known:  # the first host: nobody to sync with, so in sync (as the gates say)
            self.node.synced = True
            self.synced.set()
        self._loop_task = self.tasks.spawn("gossip-timers", self._timers())
        self.tasks.spawn("host-checks", self._host_checks())
        self._watch_silent()
        self._after()
        log.info("gossip started", node=self.node.name, addr=self.node.addr)

    def add_seed(self, addr: str) -> None:
        """Join through one more host (e.g. a swarm node Docker told us about)."""
        self.node.add_seed(self._normalise(addr))
        self._after()

    def _normalise(self, seed: str) -> str:
        host, port = split_addr(seed, self.port)
        return f"{host}:{port}"

    async def stop(self, leave: bool = True) -> None:
        if leave:
            self.node.leave(time.monotonic())
            self._flush()
            await asyncio.sleep(0.05)
        await self.tasks.close()
        await self.transport.stop()

    # -- plumbing ----------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """What the transport dropped, refused and moved, and the streams served."""
        return self.transport.counters

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    async def _timers(self) -> None:
        while True:
            self._armed = self.node.next_deadline()
            delay = max(0.0, self._armed - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, 1.0)):
                    await self._wake.wait()
            now = time.monotonic()
            if now >= self.node.next_deadline():
                self.node.tick(now)
                self._after()

    def _save_life(self) -> None:
        """Persist the incarnation (before anything carrying it leaves) and the epoch.
        Rare: once at start and at each refutation."""
        inc = self.node.members.me.inc
        if self.life is None or inc == self._saved_inc:
            return
        try:
            self.life.save({"incarnation": inc, "epoch_ms": self.stamps.epoch})
        except StateError as exc:  # gossip goes on; a restart then refutes the slow way
            log.error("cannot save the gossip incarnation", error=str(exc))
        self._saved_inc = inc

    def _after(self) -> None:
        """Send what the node wants sent, hand events to the driver, re-arm the timer."""
        self._save_life()
        self._flush()
        self._mark_synced({})  # synced in a tick (node.pending_sync)
        events = self.node.events()
        scopes = {e.scope for e in events if isinstance(e, RowEvent)}
        members = [e for e in events if isinstance(e, MemberEvent)]
        if members:
            for e in members:
                log.info("member", node=e.name, status=e.status, addr=e.addr)
            self._watch_silent()
            self.on_members(members)
        if scopes:
            self.on_rows(scopes)
        if self.node.next_deadline() < self._armed:  # something is due sooner: re-arm
            self._wake.set()

    def _flush(self) -> None:
        for send in self.node.outbox:
            if send.stream:
                msg = self.node.fill_stream(time.monotonic(), send.msg)
                self.tasks.spawn(f"pushpull {send.addr}", self._pushpull(send.addr, msg))
                continue
            self.transport.send(send.addr, send.msg)
        self.node.outbox.clear()

    def reload_keys(self, keys: list[bytes]) -> None:
        """Live key rotation: the first key sends from now on, every key opens."""
        self.transport.reload_keys(keys)

    def _packet_in(self, src: str, msg: dict[str, Any]) -> None:
        # answer to the address the sender gossips from, not the datagram's source port
        self.node.on_packet(time.monotonic(), self._sender_addr(msg, src), msg)
        self._after()

    async def _stream_in(self, src: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        """A stream request that opened: an RPC, a push-pull or updates too large for a
        packet; the answer (None: none to give)."""
        if msg.get("t") == "rpc":
            handler = self._rpc.get(str(msg.get("kind")))
            body = msg.get("body")
            if handler is None or not isinstance(body, dict):
                self.count("dropped_malformed")
                return None
            return {"t": "rpcr", "body": await handler(body)}
        if msg.get("t") not in ("pp", "rows"):
            return None
        self.count("streams_in")
        reply = self.node.on_stream(time.monotonic(), src, msg)
        self._mark_synced(msg)
        self._after()
        return reply

    def _sender_addr(self, msg: dict[str, Any], src: str) -> str:
        m = self.node.members.by_name.get(str(msg.get("from", "")))
        return m.addr if m is not None else src

    def _mark_synced(self, msg: dict[str, Any]) -> None:
        """A full state from a synced member was merged (or, every host having restarted,
        the grace after our start is over): the table is as good as the cluster's."""
        if self.node.synced and not self.synced.is_set():
            self.synced.set()
            log.info("gossip synced", node=str(msg.get("from", "the seeds, after the grace")))

    async def _pushpull(self, addr: str, msg: dict[str, Any]) -> None:
        reply = await self.transport.exchange(addr, msg, self.config.stream_timeout)
        if reply is not None and reply.get("t") == "ppr":
            self.count("streams_out")
            before = set(self.node.ready)
            self.node.on_stream_reply(time.monotonic(), addr, reply)
            # networks whose rows are now complete: the driver may prune their entries
            tables = self.config.network_tables
            self.on_rows({f"{t}/{net}" for net in self.node.ready - before for t in tables})
            self._mark_synced(reply)
            self._ready.set()
            self._after()
