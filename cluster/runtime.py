"""The asyncio shell around a GossipNode: UDP packets, TCP push-pull, timers.

Every datagram and every stream frame is sealed with the keyring (AES-GCM)
and carries an anti-replay stamp (replay.py).  What cannot be opened, is
malformed, replayed, stale or over its size limit is dropped and counted
(`GossipRuntime.counters`); nothing a peer sends can raise out of the
receive path or block it.

Authenticate before buffering: a TCP frame starts with a small sealed header
(at most HEADER_MAX bytes) that names the body's length and carries the
stamp; nothing larger is read from a peer before that header opened with a
key of the ring.  At most MAX_STREAMS inbound streams run at once; more are
closed at once (`streams_refused`).

Timers run on the monotonic clock; only row versions and replay stamps use
the wall clock.

The runtime is also the driver's PeerDirectory: publish/withdraw/rows go to
the node's replicated table, and visible row changes come back through
`on_rows(scopes)` (a non-blocking callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from pyoverlay.cluster import wire
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.hostcheck import HostChecks
from pyoverlay.cluster.keyring import OVERHEAD, AuthError, Keyring
from pyoverlay.cluster.membership import DEAD, SUSPECT, MemberEvent
from pyoverlay.cluster.node import GossipNode
from pyoverlay.cluster.replay import ReplayGuard, Stamp, StampSource
from pyoverlay.cluster.table import RowEvent
from pyoverlay.core.errors import StateError
from pyoverlay.core.store import JsonDocument
from pyoverlay.core.tasks import TaskSet

log = structlog.get_logger("pyoverlay.gossip")
HEADER_LEN = struct.Struct("!H")
HEADER_MAX = 256  # sealed header: {"n": body length} + stamp
MAX_DATAGRAM = 64 * 1024
MAX_STREAMS = 32  # inbound streams at once
MAX_STREAMS_PER_SOURCE = 4  # from one address: a flood from one host cannot take every slot
HEADER_TIMEOUT = 1.0  # a peer that has not authenticated within this is cut off
PENALTY_FAILURES = 8  # failed stream authentications from one address within PENALTY_S ...
PENALTY_S = 10.0  # ... get its next connections closed unread for PENALTY_S
HOST_CHECK_TIMEOUT = 1.0  # a silent host's kernel answers a TCP connection within this


def wall_ms() -> int:
    return int(time.time() * 1000)


def _int(value: object, default: int) -> int:
    return value if type(value) is int and value >= 0 else default


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    return host, int(port)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, runtime: GossipRuntime) -> None:
        self.runtime = runtime
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.runtime._datagram(data, f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        self.runtime.count("udp_errors")


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
        self._saved_inc = -1
        self._save_life()
        # silent hosts (hostcheck.py): members suspect or dead, and the hosts of the last
        # life (`expected`: name -> (gossip addr, vtep)) not heard from yet in this one
        self.checks = HostChecks(config.probe_interval, HOST_CHECK_TIMEOUT)
        self.expected = dict(expected or {})
        self.on_kept = on_kept or (lambda: None)
        self._checks_wake = asyncio.Event()
        self.replay = ReplayGuard()
        self._inbound: dict[str, int] = {}  # source address -> open inbound streams
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, since)
        # set at the first full state exchange with a live member (either way)
        self.synced = asyncio.Event()
        self.on_rows = on_rows or (lambda scopes: None)
        self.on_members = on_members or (lambda events: None)
        self.counters: dict[str, int] = {}
        self.tasks = TaskSet()
        self._udp: _Udp | None = None
        self._server: asyncio.AbstractServer | None = None
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()  # set after every push-pull reply
        self._armed = 0.0  # when the timer loop wakes up next (node.next_deadline)
        self._loop_task: asyncio.Task[None] | None = None
        self._rpc: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

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
        host, port = split_addr(addr, self.port)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), HOST_CHECK_TIMEOUT
            )
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            answered = True
        except ConnectionRefusedError:
            answered = True
        except (OSError, TimeoutError):
            answered = False
        if self.checks.result(time.monotonic(), name, answered):
            log.info("silent host", node=name, answers=answered, data_path_kept=answered)
            self.on_kept()
        self._checks_wake.set()

    # -- request/response for other subsystems (cluster-wide IPAM) -------------

    def register_rpc(self, kind: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """`handler(body) -> reply body` answers `call(addr, kind, body)`; it must not block."""
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
        reply = await self._exchange(addr, {"t": "rpc", "kind": kind, "body": body}, timeout)
        if reply is None or reply.get("t") != "rpcr" or not isinstance(reply.get("body"), dict):
            return None
        body_out: dict[str, Any] = reply["body"]
        return body_out

    # -- life cycle ------------------------------------------------------------

    async def start(self, seeds: Iterable[str]) -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.bind_host, self.port)
        )
        proto.transport = transport
        self._udp = proto
        self._server = await asyncio.start_server(self._serve_stream, self.bind_host, self.port)
        self.node.start(time.monotonic(), [self._normalise(s) for s in seeds])
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
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    # -- plumbing ----------------------------------------------------------------

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
            data = self._seal(send.msg)
            host, port = split_addr(send.addr, self.port)
            transport = self._udp.transport if self._udp is not None else None
            if transport is not None and not transport.is_closing():  # after a leave: no more
                transport.sendto(data, (host, port))
                self.count("packets_out")
                self.count("bytes_out", len(data))
        self.node.outbox.clear()

    def reload_keys(self, keys: list[bytes]) -> None:
        """Live key rotation: the first key sends from now on, every key opens."""
        self.keyring.replace(keys)
        log.info("gossip keys reloaded", keys=len(keys))

    def _seal(self, msg: dict[str, Any], stamp: Stamp | None = None) -> bytes:
        stamp = stamp or self.stamps.next(wall_ms())
        return self.keyring.seal(wire.encode(stamp.into(msg)))

    def _open(
        self, data: bytes, limit: int, types: set[str], expect: Stamp | None = None
    ) -> dict[str, Any] | None:
        """Open, decode and replay-check one sealed message (or with `expect`: its stamp)."""
        if len(data) > limit + OVERHEAD:
            self.count("dropped_oversized")
            return None
        try:
            msg = wire.decode(self.keyring.open(data), limit, types)
        except AuthError:
            self.count("dropped_auth")
            return None
        except wire.WireError:
            self.count("dropped_malformed")
            return None
        stamp = Stamp.of(msg)
        if stamp is None:
            self.count("dropped_malformed")
            return None
        if stamp.sender in self.node.members.banned:
            self.count("dropped_forgotten")
            return None
        if expect is not None:
            if stamp != expect:
                self.count("dropped_replay")
                return None
            return msg
        why = self.replay.check(stamp, wall_ms())
        if why is not None:
            self.count(f"dropped_{why}")
            return None
        return msg

    def _datagram(self, data: bytes, src: str) -> None:
        self.count("packets_in")
        self.count("bytes_in", len(data))
        msg = self._open(data, self.config.packet_budget * 2, wire.PACKET_TYPES)
        if msg is None:
            return
        # answer to the address the sender gossips from, not the datagram's source port
        self.node.on_packet(time.monotonic(), self._sender_addr(msg, src), msg)
        self._after()

    def _sender_addr(self, msg: dict[str, Any], src: str) -> str:
        m = self.node.members.by_name.get(str(msg.get("from", "")))
        return m.addr if m is not None else src

    async def _read_frame(
        self,
        reader: asyncio.StreamReader,
        timeout: float,
        header_timeout: float,
        head: bytes | None = None,
    ) -> dict[str, Any] | None:
        """One stream frame: a sealed header first, the body only once the header opened
        (`head`: its length prefix, if already read)."""
        if head is None:
            head = await asyncio.wait_for(reader.readexactly(HEADER_LEN.size), header_timeout)
        (hsize,) = HEADER_LEN.unpack(head)
        if hsize > HEADER_MAX:
            self.count("dropped_oversized")
            return None
        sealed = await asyncio.wait_for(reader.readexactly(hsize), header_timeout)
        header = self._open(sealed, HEADER_MAX, {"hdr"})
        if header is None:
            return None
        size = header.get("n")
        if type(size) is not int or not 0 < size <= wire.MAX_STREAM + OVERHEAD:
            self.count("dropped_oversized")
            return None
        stamp = Stamp.of(header)
        body = await asyncio.wait_for(reader.readexactly(size), timeout)
        return self._open(body, wire.MAX_STREAM, wire.STREAM_TYPES, expect=stamp)

    def _frame(self, msg: dict[str, Any]) -> bytes:
        stamp = self.stamps.next(wall_ms())
        body = self._seal(msg, stamp)
        header = self._seal({"t": "hdr", "n": len(body)}, stamp)
        self.count("bytes_out", len(body) + len(header))
        return HEADER_LEN.pack(len(header)) + header + body

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        src = f"{peer[0]}:{peer[1]}" if peer else "?"
        host = str(peer[0]) if peer else "?"
        if (
            sum(self._inbound.values()) >= MAX_STREAMS
            or self._inbound.get(host, 0) >= MAX_STREAMS_PER_SOURCE
            or self._penalised(host)
        ):
            self.count("streams_refused")
            writer.close()
            return
        self._inbound[host] = self._inbound.get(host, 0) + 1
        authenticated = False
        try:
            authenticated = await self._serve_one(src, reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            self.count("stream_errors")
        finally:
            if not authenticated:
                self._failed(host)
            self._inbound[host] -= 1
            if not self._inbound[host]:
                del self._inbound[host]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _penalised(self, host: str) -> bool:
        count, since = self._failures.get(host, (0, 0.0))
        if time.monotonic() - since > PENALTY_S:
            self._failures.pop(host, None)
            return False
        return count >= PENALTY_FAILURES

    def _failed(self, host: str) -> None:
        """A stream from `host` did not authenticate: count it (bounded per address)."""
        now = time.monotonic()
        count, since = self._failures.get(host, (0, now))
        if now - since > PENALTY_S:
            count, since = 0, now
        if host not in self._failures and len(self._failures) >= 1024:
            self._failures.clear()  # bounded memory under a spoofed-source flood
        self._failures[host] = (count + 1, since)

    async def _serve_one(
        self, src: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False if the peer never authenticated."""
        try:
            head = await asyncio.wait_for(reader.readexactly(HEADER_LEN.size), HEADER_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            self.count("host_checks_in")  # connected, closed, sent nothing: a host check
            return True
        msg = await self._read_frame(reader, self.config.stream_timeout, HEADER_TIMEOUT, head)
        if msg is None:
            return False
        if msg.get("t") == "rpc":
            handler = self._rpc.get(str(msg.get("kind")))
            body = msg.get("body")
            if handler is None or not isinstance(body, dict):
                self.count("dropped_malformed")
                return True
            reply = {"t": "rpcr", "body": handler(body)}
        elif msg.get("t") in ("pp", "rows"):
            self.count("streams_in")
            reply = self.node.on_stream(time.monotonic(), src, msg)
            self._mark_synced(msg)
        else:
            return True
        writer.write(self._frame(reply))
        await asyncio.wait_for(writer.drain(), self.config.stream_timeout)
        self._after()
        return True

    def _mark_synced(self, msg: dict[str, Any]) -> None:
        """A full state from a live member was merged: the table is as good as the cluster's."""
        if self.node.synced and not self.synced.is_set():
            self.synced.set()
            log.info("gossip synced", node=str(msg.get("from")))

    async def _pushpull(self, addr: str, msg: dict[str, Any]) -> None:
        reply = await self._exchange(addr, msg, self.config.stream_timeout)
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

    async def _exchange(
        self, addr: str, msg: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        host, port = split_addr(addr, self.port)
        writer: asyncio.StreamWriter | None = None
        try:
            reader, conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer = conn
            conn.write(self._frame(msg))
            await asyncio.wait_for(conn.drain(), timeout)
            return await self._read_frame(reader, timeout, timeout)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.count("stream_errors")
            log.debug("stream exchange failed", addr=addr, error=str(exc))
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
