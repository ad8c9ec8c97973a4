"""The asyncio shell around a GossipNode: UDP packets, TCP push-pull, timers.

Every datagram and every stream frame is sealed with the keyring (AES-GCM).
What cannot be opened, is malformed, or is over its size limit is dropped
and counted (`GossipRuntime.counters`); nothing a peer sends can raise out
of the receive path or block it: streams have a timeout and a size limit.

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

from pyoverlay.state.tasks import TaskSet

from . import wire
from .config import GossipConfig
from .keyring import OVERHEAD, AuthError, Keyring
from .membership import ALIVE, LEFT, SUSPECT, MemberEvent
from .node import GossipNode
from .table import RowEvent

log = structlog.get_logger("pyoverlay.gossip")
FRAME = struct.Struct("!I")
MAX_DATAGRAM = 64 * 1024


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
    ) -> None:
        self.keyring = keyring
        self.config = config
        self.bind_host = bind_host
        self.port = port
        self.node = GossipNode(
            name, f"{bind_host}:{port}", config, random.Random(), time.time(), meta
        )
        self.on_rows = on_rows or (lambda scopes: None)
        self.on_members = on_members or (lambda events: None)
        self.counters: dict[str, int] = {}
        self.tasks = TaskSet()
        self._udp: _Udp | None = None
        self._server: asyncio.AbstractServer | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._rpc: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

    # -- PeerDirectory -------------------------------------------------------

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        self.node.publish(time.time(), scope, key, value)
        self._after()

    def withdraw(self, scope: str, key: str) -> None:
        self.node.withdraw(time.time(), scope, key)
        self._after()

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        return [(r.key, r.value or {}, r.version) for r in self.node.table.visible(scope)]

    # -- request/response for other subsystems (cluster-wide IPAM) -------------

    def register_rpc(self, kind: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """`handler(body) -> reply body` answers `call(addr, kind, body)`; it must not block."""
        self._rpc[kind] = handler

    def voters(self) -> list[tuple[str, str, bool]]:
        return [
            (m.name, m.addr, m.status in (ALIVE, SUSPECT))
            for m in self.node.members.by_name.values()
            if m.status != LEFT
        ]

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
        self.node.start(time.time(), [self._normalise(s) for s in seeds])
        self._loop_task = self.tasks.spawn("gossip-timers", self._timers())
        self._after()
        log.info("gossip started", node=self.node.name, addr=self.node.addr)

    def _normalise(self, seed: str) -> str:
        host, port = split_addr(seed, self.port)
        return f"{host}:{port}"

    async def stop(self, leave: bool = True) -> None:
        if leave:
            self.node.leave(time.time())
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
            delay = max(0.0, self.node.next_deadline() - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
            self.node.tick(time.time())
            self._after()

    def _after(self) -> None:
        """Send what the node wants sent, hand events to the driver, re-arm the timer."""
        self._flush()
        events = self.node.events()
        scopes = {e.scope for e in events if isinstance(e, RowEvent)}
        members = [e for e in events if isinstance(e, MemberEvent)]
        if members:
            for e in members:
                log.info("member", node=e.name, status=e.status, addr=e.addr)
            self.on_members(members)
        if scopes:
            self.on_rows(scopes)
        self._wake.set()

    def _flush(self) -> None:
        for send in self.node.outbox:
            if send.stream:
                msg = self.node.fill_stream(time.time(), send.msg)
                self.tasks.spawn(f"pushpull {send.addr}", self._pushpull(send.addr, msg))
                continue
            data = self.keyring.seal(wire.encode(send.msg))
            host, port = split_addr(send.addr, self.port)
            if self._udp is not None and self._udp.transport is not None:
                self._udp.transport.sendto(data, (host, port))
                self.count("packets_out")
                self.count("bytes_out", len(data))
        self.node.outbox.clear()

    def _open(self, data: bytes, limit: int, types: set[str]) -> dict[str, Any] | None:
        if len(data) > limit + OVERHEAD:
            self.count("dropped_oversized")
            return None
        try:
            return wire.decode(self.keyring.open(data), limit, types)
        except AuthError:
            self.count("dropped_auth")
        except wire.WireError:
            self.count("dropped_malformed")
        return None

    def _datagram(self, data: bytes, src: str) -> None:
        self.count("packets_in")
        self.count("bytes_in", len(data))
        msg = self._open(data, self.config.packet_budget * 2, wire.PACKET_TYPES)
        if msg is None:
            return
        # answer to the address the sender gossips from, not the datagram's source port
        self.node.on_packet(time.time(), self._sender_addr(msg, src), msg)
        self._after()

    def _sender_addr(self, msg: dict[str, Any], src: str) -> str:
        m = self.node.members.by_name.get(str(msg.get("from", "")))
        return m.addr if m is not None else src

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
        if size > wire.MAX_STREAM + OVERHEAD:
            self.count("dropped_oversized")
            raise ValueError("stream frame too large")
        return await reader.readexactly(size)

    def _frame(self, msg: dict[str, Any]) -> bytes:
        sealed = self.keyring.seal(wire.encode(msg))
        self.count("bytes_out", len(sealed))
        return FRAME.pack(len(sealed)) + sealed

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        src = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            data = await asyncio.wait_for(self._read_frame(reader), self.config.stream_timeout)
            msg = self._open(data, wire.MAX_STREAM, wire.STREAM_TYPES)
            if msg is None:
                return
            if msg.get("t") == "rpc":
                handler = self._rpc.get(str(msg.get("kind")))
                body = msg.get("body")
                if handler is None or not isinstance(body, dict):
                    self.count("dropped_malformed")
                    return
                reply = {"t": "rpcr", "body": handler(body)}
            elif msg.get("t") == "pp":
                self.count("streams_in")
                reply = self.node.on_stream(time.time(), src, msg)
            else:
                return
            writer.write(self._frame(reply))
            await asyncio.wait_for(writer.drain(), self.config.stream_timeout)
            self._after()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            self.count("stream_errors")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pushpull(self, addr: str, msg: dict[str, Any]) -> None:
        reply = await self._exchange(addr, msg, self.config.stream_timeout)
        if reply is not None and reply.get("t") == "ppr":
            self.count("streams_out")
            self.node.on_stream_reply(time.time(), addr, reply)
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
            data = await asyncio.wait_for(self._read_frame(reader), timeout)
            return self._open(data, wire.MAX_STREAM, wire.STREAM_TYPES)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.count("stream_errors")
            log.debug("stream exchange failed", addr=addr, error=str(exc))
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
