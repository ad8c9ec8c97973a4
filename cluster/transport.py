"""The gossip transport (memberlist's seam): datagrams, and request/answer streams, over
UDP and TCP, sealed and stamped. The runtime (runtime.py) drives a node over a
`Transport`; `UdpTcpTransport` is the real one (the simulator, testing/sim.py, moves
the node's messages itself). (~360 lines: sealing, bounded reads and the two socket
kinds are one security boundary, kept in one file to be read as one.)

Every datagram and every stream frame is sealed with the keyring (AES-GCM)
and carries an anti-replay stamp (replay.py).  What cannot be opened, is
malformed, replayed, stale or over its size limit is dropped and counted
(`counters`); nothing a peer sends can raise out of the receive path or block it.

Authenticate before buffering: a TCP frame starts with a small sealed header
(at most HEADER_MAX bytes) that names the body's length and carries the
stamp; nothing larger is read from a peer before that header opened with a
key of the ring.  At most MAX_STREAMS inbound streams run at once, at most
MAX_STREAMS_PER_SOURCE from one address; an address that fails to
authenticate PENALTY_FAILURES times within PENALTY_S is refused for a while.
A connection closed before its first byte is a host check (hostcheck.py): no
penalty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from pyoverlay.cluster import wire
from pyoverlay.cluster.keyring import OVERHEAD, AuthError, Keyring
from pyoverlay.cluster.replay import ReplayGuard, Stamp, StampSource

log = structlog.get_logger("pyoverlay.gossip")
HEADER_LEN = struct.Struct("!H")
HEADER_MAX = 256  # sealed header: {"n": body length} + stamp
MAX_STREAMS = 32  # inbound streams at once
MAX_STREAMS_PER_SOURCE = 4  # from one address: a flood from one host cannot take every slot
HEADER_TIMEOUT = 1.0  # a peer that has not authenticated within this is cut off
PENALTY_FAILURES = 8  # failed stream authentications from one address within PENALTY_S ...
PENALTY_S = 10.0  # ... get its next connections closed unread for PENALTY_S

Message = dict[str, Any]
OnPacket = Callable[[str, Message], None]  # (source address, message)
OnStream = Callable[[str, Message], Awaitable[Message | None]]  # -> the answer, or none


def wall_ms() -> int:
    return int(time.time() * 1000)


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    return host, int(port)


class Transport(Protocol):
    counters: dict[str, int]

    async def start(self, on_packet: OnPacket, on_stream: OnStream) -> None:
        """Listen; every datagram and stream request that opens goes to the callbacks."""
        ...

    def send(self, addr: str, msg: Message) -> None:
        """One datagram (dropped silently once stopped)."""
        ...

    async def exchange(self, addr: str, msg: Message, timeout: float) -> Message | None:
        """One request/answer over a stream; None if the peer does not answer."""
        ...

    async def host_answers(self, addr: str, timeout: float) -> bool:
        """Does the host's kernel answer a connection to `addr` (accepted or refused)?"""
        ...

    def reload_keys(self, keys: list[bytes]) -> None: ...

    async def stop(self) -> None: ...


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, transport: UdpTcpTransport) -> None:
        self.owner = transport
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._datagram(data, f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        self.owner.count("udp_errors")


class UdpTcpTransport:
    def __init__(
        self,
        bind_host: str,
        port: int,
        keyring: Keyring,
        stamps: StampSource,
        packet_limit: int,
        stream_timeout: float,
        banned: Callable[[str], bool] = lambda sender: False,
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.keyring = keyring
        self.stamps = stamps
        self.packet_limit = packet_limit
        self.stream_timeout = stream_timeout
        self.banned = banned  # senders forgotten for good (`pyoverlay forget`)
        self.replay = ReplayGuard()
        self.counters: dict[str, int] = {}
        self._inbound: dict[str, int] = {}  # source address -> open inbound streams
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, since)
        self._udp: _Udp | None = None
        self._server: asyncio.AbstractServer | None = None
        self._on_packet: OnPacket = lambda src, msg: None
        self._on_stream: OnStream | None = None

    async def start(self, on_packet: OnPacket, on_stream: OnStream) -> None:
        self._on_packet, self._on_stream = on_packet, on_stream
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.bind_host, self.port)
        )
        proto.transport = transport
        self._udp = proto
        self._server = await asyncio.start_server(self._serve_stream, self.bind_host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def send(self, addr: str, msg: Message) -> None:
        data = self._seal(msg)
        host, port = split_addr(addr, self.port)
        transport = self._udp.transport if self._udp is not None else None
        if transport is not None and not transport.is_closing():  # after a leave: no more
            transport.sendto(data, (host, port))
            self.count("packets_out")
            self.count("bytes_out", len(data))

    def reload_keys(self, keys: list[bytes]) -> None:
        """Live key rotation: the first key sends from now on, every key opens."""
        self.keyring.replace(keys)
        log.info("gossip keys reloaded", keys=len(keys))

    async def host_answers(self, addr: str, timeout: float) -> bool:
        """Nothing is sent: the other side counts a host check, not a failed stream.

        The verdict is the kernel's, read when the wait ends: did the handshake complete
        or get refused within `timeout`? A busy host's event loop may see the SYN-ACK
        late, but a late look must not turn an answer into silence (a restarting plugin
        under load took live hosts for dead and dropped their entries)."""
        host, port = split_addr(addr, self.port)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        try:
            try:
                sock.connect((host, port))
                return True
            except (BlockingIOError, InterruptedError):
                pass  # in progress: the kernel finishes it
            except ConnectionRefusedError:
                return True  # the host is up, nothing listens
            except OSError:
                return False  # unreachable (no route)
            # asyncio's sock_connect reads (and so clears) SO_ERROR in its own callback: a
            # late loop could cancel it after that read and leave a refused connection
            # looking unanswered. Here SO_ERROR is read once, by us, when the wait ends.
            loop.add_writer(sock.fileno(), done.set)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout)
            finally:
                loop.remove_writer(sock.fileno())
            return connected_or_refused(sock)
        finally:
            sock.close()

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
        if self.banned(stamp.sender):
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
        msg = self._open(data, self.packet_limit, wire.PACKET_TYPES)
        if msg is not None:
            self._on_packet(src, msg)

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
        msg = await self._read_frame(reader, self.stream_timeout, HEADER_TIMEOUT, head)
        if msg is None:
            return False
        reply = await self._on_stream(src, msg) if self._on_stream is not None else None
        if reply is not None:
            writer.write(self._frame(reply))
            await asyncio.wait_for(writer.drain(), self.stream_timeout)
        return True

    async def exchange(
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


def connected_or_refused(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed or been refused by now (or completed
    and was reset at once: a listener closed under kill -9; the host's kernel answered)."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (
        errno.ECONNREFUSED,
        errno.ECONNRESET,
    ):
        return True
    try:
        sock.getpeername()
    except OSError:
        return False  # still connecting (or failed otherwise): nothing answered
    return True
