"""PURE: the probe cycle (SWIM + Lifeguard). Every probe_interval x (1 + health) one
member is pinged; without an ack within probe_timeout x (1 + health),
`indirect_checks` others are asked to ping it (they answer ack or nack); at
the end of the interval an unacked member is suspected.  The health score
rises when we miss acks without getting nacks or must refute a suspicion of
ourselves, so a slow node slows its own accusations."""

from __future__ import annotations

from typing import Any

from pyoverlay.cluster.disseminate import Dissemination
from pyoverlay.cluster.membership import ALIVE, SUSPECT
from pyoverlay.cluster.nodestate import Probe, Relay, Send


class Probing(Dissemination):
    def _start_probe(self, now: float) -> None:
        interval = self.config.probe_interval * (1 + self.health)
        self.next_probe = now + interval
        candidates = {m.name: m for m in self.members.others(ALIVE, SUSPECT)}
        if not candidates:
            self.probe = None
            return
        self.probe_order = [n for n in self.probe_order if n in candidates]
        if not self.probe_order:
            self.probe_order = list(candidates)
            self.rng.shuffle(self.probe_order)
        target = candidates[self.probe_order.pop()]
        self.seq += 1
        self.probe = Probe(
            target.name,
            target.addr,
            self.seq,
            now + self.config.probe_timeout * (1 + self.health),
        )
        msg = {"t": "ping", "seq": self.seq, "from": self.name, "to": target.name}
        packet = self._packet(msg, target.name, buddy=target, counted=False)
        self.outbox.append(Send(target.addr, packet))

    def _indirect_probe(self, p: Probe) -> None:
        relays = [m for m in self.members.others(ALIVE) if m.name != p.target]
        self.rng.shuffle(relays)
        for m in relays[: self.config.indirect_checks]:
            msg = {"t": "preq", "seq": p.seq, "from": self.name, "to": p.target, "ta": p.addr}
            self.outbox.append(Send(m.addr, msg))
            p.indirect += 1
        if not p.indirect:
            p.indirect = -1  # nobody to ask: do not retry every tick

    def _finish_probe(self, now: float) -> None:
        p, self.probe = self.probe, None
        if p is None:
            return
        if p.acked:
            self.health = max(0, self.health - 1)
            return
        # Lifeguard: relays that answered nack prove our own network works;
        # silence from them too suggests the problem is here.
        if p.indirect <= 0 or p.nacks < p.indirect:
            self.health = min(self.config.awareness_max, self.health + 1)
        u = self.members.suspect(now, p.target)
        if u is not None:
            self._enqueue(("m", p.target), "m", u)

    def on_packet(self, now: float, src: str, msg: dict[str, Any]) -> None:
        self._refuted = False
        try:
            self._merge_piggyback(now, msg)
            self._answer_refutation(src)
            t = msg["t"]
            if t == "ping":
                if msg.get("to") == self.name:
                    reply = {"t": "ack", "seq": int(msg["seq"]), "from": self.name}
                    sender = str(msg.get("from"))
                    self.outbox.append(Send(src, self._packet(reply, sender, counted=False)))
            elif t == "ack":
                seq = int(msg["seq"])
                if self.probe and self.probe.seq == seq:
                    self.probe.acked = True
                relay = self.relays.pop(seq, None)
                if relay is not None:
                    self.outbox.append(
                        Send(relay.origin, {"t": "ack", "seq": relay.seq, "from": self.name})
                    )
            elif t == "nack":
                if self.probe and self.probe.seq == int(msg["seq"]):
                    self.probe.nacks += 1
            elif t == "preq":
                self.seq += 1
                self.relays[self.seq] = Relay(src, int(msg["seq"]), now + self.config.probe_timeout)
                ping = {"t": "ping", "seq": self.seq, "from": self.name, "to": str(msg["to"])}
                self.outbox.append(Send(str(msg["ta"]), ping))
        except (KeyError, TypeError, ValueError, OverflowError):
            self.malformed += 1
        self._collect()
