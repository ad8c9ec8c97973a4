"""A deterministic simulated network for gossip nodes: fake clock, loss, partitions, stalls.

Nodes are the real GossipNode; only the network and the clock are fake.
Events (packet deliveries, stream request/reply, node deadlines) sit in one
heap ordered by virtual time, so 200 nodes over a minute of virtual time run
in seconds.  Messages go through the real encoding (wire.encode/decode), so
byte counts are real too, and a packet over the packet budget is lost (counted
in `oversized`), as on a real network.

    net = SimNetwork(seed=1, loss=0.05)
    nodes = [net.add_node(f"n{i}") for i in range(50)]
    net.join_all()
    net.run_for(10.0)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyoverlay.cluster import wire
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.node import GossipNode


@dataclass
class NodeStats:
    packets_out: int = 0
    bytes_out: int = 0
    streams_out: int = 0
    oversized: int = 0  # packets over the packet budget (the real network drops them)


@dataclass
class SimNetwork:
    seed: int = 0
    loss: float = 0.0
    latency: tuple[float, float] = (0.0005, 0.003)
    config: GossipConfig = field(default_factory=GossipConfig.lan)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes: dict[str, GossipNode] = {}
        self.stats: dict[str, NodeStats] = {}
        self.down: set[str] = set()
        self.stalled: dict[str, float] = {}
        self.blocked: Callable[[str, str], bool] = lambda a, b: False
        self._heap: list[tuple[float, int, str, str, str, Any]] = []
        self._seq = 0
        self._deadline: dict[str, float] = {}

    # -- building --------------------------------------------------------------

    def add_node(
        self, name: str, meta: dict[str, str] | None = None, incarnation: int = 0
    ) -> GossipNode:
        addr = f"{name}:7373"
        rng = random.Random(self.rng.random())
        node = GossipNode(name, addr, self.config, rng, self.now, meta, incarnation)
        self.nodes[addr] = node
        self.stats[addr] = NodeStats()
        self._schedule(node)
        return node

    def join_all(self, via: int = 0) -> None:
        nodes = list(self.nodes.values())
        seed = nodes[via].addr
        nodes[via].synced = True  # as the runtime starts a host with no seeds: the first
        for n in nodes:
            if n.addr != seed:
                n.start(self.now, [seed])
                self._flush(n)

    # -- faults ----------------------------------------------------------------

    def partition(self, *groups: set[str]) -> None:
        """Only nodes in the same group (by name) can talk; clear with heal()."""
        where = {name: i for i, g in enumerate(groups) for name in g}
        self.blocked = lambda a, b: where.get(a.split(":")[0]) != where.get(b.split(":")[0])

    def heal(self) -> None:
        self.blocked = lambda a, b: False

    def crash(self, node: GossipNode) -> None:
        self.down.add(node.addr)

    def restart(self, node: GossipNode, incarnation: int = 0) -> GossipNode:
        """A new process for a crashed node's name and address (its old state gone but for
        `incarnation`, what it saved); not started yet."""
        del self.nodes[node.addr]
        self.down.discard(node.addr)
        return self.add_node(node.name, dict(node.members.me.meta), incarnation)

    def start(self, node: GossipNode, seeds: list[str]) -> None:
        node.start(self.now, seeds)
        self._flush(node)

    def publish(self, node: GossipNode, scope: str, key: str, value: dict[str, Any]) -> None:
        """`node` writes a row now, and what that sends leaves at once (as the runtime
        sends after every call), not at the node's next timer."""
        node.publish(self.now, scope, key, value)
        self._flush(node)

    def stall(self, node: GossipNode, seconds: float) -> None:
        self.stalled[node.addr] = self.now + seconds

    # -- running ---------------------------------------------------------------

    def _push(self, at: float, kind: str, dst: str, src: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, dst, src, payload))

    def _schedule(self, node: GossipNode) -> None:
        at = max(node.next_deadline(), self.now)
        if self._deadline.get(node.addr) != at:
            self._deadline[node.addr] = at
            self._push(at, "tick", node.addr, "", at)

    def _delay(self) -> float:
        lo, hi = self.latency
        return lo + (hi - lo) * self.rng.random()

    def _reachable(self, src: str, dst: str) -> bool:
        return dst in self.nodes and dst not in self.down and not self.blocked(src, dst)

    def _flush(self, node: GossipNode) -> None:
        st = self.stats[node.addr]
        for send in node.outbox:
            if send.stream:
                st.streams_out += 1
                msg = node.fill_stream(self.now, send.msg)
                data = wire.encode(msg)
                st.bytes_out += len(data)
                if self._reachable(node.addr, send.addr):
                    self._push(self.now + self._delay(), "stream", send.addr, node.addr, data)
                continue
            data = wire.encode(send.msg)
            st.packets_out += 1
            st.bytes_out += len(data)
            if len(data) > self.config.packet_budget:
                st.oversized += 1
                continue
            if self.rng.random() < self.loss or not self._reachable(node.addr, send.addr):
                continue
            self._push(self.now + self._delay(), "packet", send.addr, node.addr, data)
        node.outbox.clear()
        self._schedule(node)

    def step(self) -> bool:
        if not self._heap:
            return False
        at, _, kind, dst, src, payload = heapq.heappop(self._heap)
        self.now = max(self.now, at)
        node = self.nodes.get(dst)
        if node is None or dst in self.down:
            return True
        until = self.stalled.get(dst)
        if until is not None:
            if self.now < until:
                if kind != "tick":
                    self._push(until + 1e-6, kind, dst, src, payload)  # held in the socket
                else:
                    self._push(until, "tick", dst, "", until)
                return True
            del self.stalled[dst]
        if kind == "tick":
            if self._deadline.get(dst) != payload:
                return True
            self._deadline.pop(dst, None)
            node.tick(self.now)
        elif kind == "packet":
            node.on_packet(
                self.now, src, wire.decode(payload, self.config.packet_budget, wire.PACKET_TYPES)
            )
        elif kind == "stream":
            reply = node.on_stream(
                self.now, src, wire.decode(payload, wire.MAX_STREAM, wire.STREAM_TYPES)
            )
            data = wire.encode(reply)
            self.stats[dst].bytes_out += len(data)
            if self._reachable(dst, src):
                self._push(self.now + self._delay(), "reply", src, dst, data)
        elif kind == "reply":
            node.on_stream_reply(
                self.now, src, wire.decode(payload, wire.MAX_STREAM, wire.STREAM_TYPES)
            )
        self._flush(node)
        return True

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            self.step()
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_while(self, cond: Callable[[], bool], limit: float, check_every: float = 0.05) -> float:
        """Run until cond() is false; returns the virtual time it took (or raises)."""
        start = self.now
        while cond():
            if self.now - start > limit:
                raise TimeoutError(f"condition still true after {limit}s of virtual time")
            self.run_for(check_every)
        return self.now - start

    def live(self) -> list[GossipNode]:
        return [n for a, n in self.nodes.items() if a not in self.down]
