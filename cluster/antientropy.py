"""PURE: anti-entropy. Every pushpull_interval, and on join, a full state exchange over a
stream repairs anything lost; every reconnect_interval a dead member (or a seed, when
alone) is tried, which heals partitions (the other side refutes our "dead" with a
higher incarnation). Per network (scoping.py), joining is a push-pull with a member
already in it at once and again `net_resync` later; until the first one answers,
`network_ready` is False. A network push-pull exchanges only that network's rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyoverlay.cluster.membership import DEAD
from pyoverlay.cluster.nodestate import Send
from pyoverlay.cluster.probe import Probing


class AntiEntropy(Probing):
    def _fetch_network(self, net: str) -> bool:
        peers = self._net_peers(net)
        heard = self.heard.get(net, set())
        peers = [m for m in peers if m.name not in heard] or peers  # a new voice first
        if peers:
            self._pushpull(self.rng.choice(peers).addr, net)
        return bool(peers)

    def _full_exchange(self, now: float, peer_synced: object) -> None:
        """A full state from another member was merged. It makes our table the cluster's
        if that member's was (an older build does not say: as before, it counts); one
        that has just restarted too knows little more than we do, so its state counts
        only `sync_grace` after our start (every host restarted at once: nobody is
        synced, and by then the union of what every seed answered is the cluster's)."""
        if self.synced:
            return
        if peer_synced is False and now < self.started + self.config.sync_grace:
            self.pending_sync = True  # tick() makes it count once the grace is over
            return
        self._now_synced(now)

    def _now_synced(self, now: float) -> None:
        """The networks joined before any member was known (a restart joins its networks
        first) are fetched now from a member in each: a full exchange readies only those
        its partner has all the rows of."""
        if self.synced:
            return
        self.synced = True
        self._collect()  # the subscriptions just merged: who is in which network
        if self.direct:
            self._send_direct(now)  # our rows written before we knew who is in our networks
        for net in sorted(self.networks - self.ready):
            if net not in self.resync and self._fetch_network(net):
                self.resync[net] = now + self.config.net_resync

    def _state(self, now: float, to: str | None, nets: Iterable[str] | None) -> dict[str, Any]:
        """Our state for member `to` (global rows, its own, and those of `nets`; None: all)."""
        wanted = None if nets is None else set(nets)
        return {
            "members": [m.update() for m in self.members.by_name.values()],
            "rows": self.table.dump(
                now,
                lambda r: (
                    wanted is None
                    or r.owner == to
                    or (net := self._network_of(r.scope)) is None
                    or net in wanted
                ),
            ),
        }

    def _net_state(self, now: float, net: str) -> dict[str, Any]:
        """Only the rows of network `net` (a network push-pull: no members, no global rows)."""
        scopes = [f"{table}/{net}" for table in self.config.network_tables]
        return {
            "rows": [r.wire(now) for s in scopes for r in self.table.scopes.get(s, {}).values()]
        }

    def _pushpull(self, addr: str, net: str | None = None) -> None:
        """A full state exchange with `addr`, or (net) one of that network's rows only."""
        msg: dict[str, Any] = {"t": "pp", "from": self.name, "to": addr, "state": {}}
        if net is not None:
            msg["only"] = net
        self.outbox.append(Send(addr, msg, stream=True))

    def fill_stream(self, now: float, msg: dict[str, Any]) -> dict[str, Any]:
        """Called by the runtime just before sending a push-pull, so the state is current."""
        if msg.get("t") == "pp" and isinstance(msg.get("only"), str):
            net = msg["only"]
            return {**msg, "nets": [net], "state": self._net_state(now, net)}
        if msg.get("t") == "pp":
            to = next(
                (m.name for m in self.members.by_name.values() if m.addr == msg.get("to")), None
            )
            nets = self.interest.by_node.get(to, frozenset()) if to else self.networks
            self.asked[str(msg.get("to"))] = set(self.networks)  # what the reply answers
            return {
                **msg,
                "nets": sorted(self.networks),
                "synced": self.synced,
                "state": self._state(now, to, nets),
            }
        return msg

    def on_stream(self, now: float, src: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Serve a push-pull: merge theirs, answer with ours (and the networks they are in;
        a refutation of what they said about us rides in the reply). Or take updates too
        large for a packet (`rows`), as if they had come in one."""
        if msg.get("t") == "rows":
            self._merge_piggyback(now, msg)
            self._collect()
            return {"t": "rowsr", "from": self.name}
        self._merge_state(now, msg.get("state") or {})
        self._refuted = False
        only = msg.get("only")
        was_synced = self.synced  # what we tell the asker: before its state counted
        if not isinstance(only, str) and msg.get("from") != self.name:  # a full exchange
            self._full_exchange(now, msg.get("synced"))
        self._collect()
        # "nets": the networks whose rows we serve as complete: only those we are in and
        # have all the rows of ourselves (a host outside a network has none of them, a
        # host that has just restarted only its own; the asker prunes by what we lack)
        if isinstance(only, str):
            return {
                "t": "ppr",
                "from": self.name,
                "only": only,
                "nets": [only] if self._serves(only) else [],
                "state": self._net_state(now, only),
            }
        asked = msg.get("nets")
        nets = [str(n) for n in asked[:4096]] if isinstance(asked, list) else None
        sender = str(msg.get("from"))
        return {
            "t": "ppr",
            "from": self.name,
            "nets": None if nets is None else [n for n in nets if self._serves(n)],
            "synced": was_synced,
            "state": self._state(now, sender, nets),
        }

    def network_ready(self, net: str, synced: bool | None = None) -> bool:
        """True once `net`'s rows have been fetched from a member that has them all, or
        every live member in it has answered with its own, or nobody else is in it (known
        once synced; `synced`: the caller's view, e.g. after a grace time)."""
        if net in self.ready:
            return True
        synced = self.synced if synced is None else synced
        heard = self.heard.get(net, set())
        if net in self.networks and synced and all(m.name in heard for m in self._net_peers(net)):
            self.ready.add(net)  # nobody else is in it, or every one has answered
            return True
        return False

    def _serves(self, net: str) -> bool:
        return net in self.networks and self.network_ready(net)

    def on_stream_reply(self, now: float, src: str, msg: dict[str, Any]) -> None:
        self._refuted = False
        self._merge_state(now, msg.get("state") or {})
        self._answer_refutation(src)
        self._collect()  # the replier's subscription row is merged: the networks it is in
        replier = str(msg.get("from"))
        inside = self.networks & self.interest.by_node.get(replier, frozenset())
        state = msg.get("state")
        full = isinstance(state, dict) and "members" in state  # not one network's rows
        # a network's rows are complete when a member that has them all says so (an
        # older replier echoes every network asked: only those it is in count) ...
        served = msg.get("nets")
        if isinstance(served, list):
            self.ready |= inside & {str(n) for n in served[:4096]}
        # ... or when every live member in it has answered with its own rows (the hosts
        # of a network that all restarted at once: none has them all, together they do)
        asked = self.asked.pop(src, set()) if full else {str(msg.get("only"))}
        for net in inside & asked:  # a network joined after we asked: not in the reply
            self.heard.setdefault(net, set()).add(replier)
            if not self.network_ready(net) and not full:
                self._fetch_network(net)  # on to a member not heard yet
        if full and replier != self.name:
            self._full_exchange(now, msg.get("synced"))
        self._collect()

    def _merge_state(self, now: float, state: dict[str, Any]) -> None:
        try:
            # what was news to us is gossiped on, so a join or a healed
            # partition spreads in gossip rounds, not push-pull periods
            for u in state.get("members") or ():
                if isinstance(u, dict) and self.members.apply(now, u):
                    self._after_member_update(u)
            for r in state.get("rows") or ():
                if isinstance(r, dict):
                    self._merge_row(now, r)
        except (TypeError, AttributeError, ValueError, OverflowError):
            self.malformed += 1

    def _reconnect(self) -> None:
        """One push-pull with a dead member or a seed no member answers for yet: hosts
        that booted together may have joined each other while a seed was still down, and
        that seed (say, the first host, with no --join of its own) must not stay alone."""
        known = {m.addr for m in self.members.by_name.values()}
        candidates = [m.addr for m in self.members.others(DEAD)]
        candidates += [s for s in self.seeds if s not in known]
        if candidates:
            self._pushpull(self.rng.choice(candidates))
