"""Gossip timings. Modelled on memberlist's LAN profile, tightened for crash detection.

pyoverlay's LAN defaults probe every 0.5 s (memberlist: 1 s) so a crashed
host is detected in about 4 s; the Lifeguard suspicion minimum of
5 x max(1, log10(n)) x 0.5 s = 2.5 s keeps a node that stalls for 2 s from
being declared dead: it refutes the suspicion when it wakes up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pyoverlay.cluster.scoping import NETWORK_TABLES


@dataclass(frozen=True)
class GossipConfig:
    probe_interval: float = 0.5
    probe_timeout: float = 0.3
    indirect_checks: int = 3
    suspicion_mult: int = 5
    suspicion_max_mult: int = 6
    awareness_max: int = 8
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_dead: float = 15.0
    retransmit_mult: int = 4
    # a row a host writes itself goes straight to this many live members of its network
    # (all of a network up to that size) before gossip repeats it: gossip alone leaves
    # about one member in 3,000 without it after its retransmits, repaired only by a
    # push-pull seconds later (the p99 of a start storm); 0: gossip only
    direct_fanout: int = 128
    pushpull_interval: float = 30.0
    # tables whose rows only hosts in the network keep (scoping.py); () = the old way
    network_tables: tuple[str, ...] = NETWORK_TABLES
    net_resync: float = 2.0  # a network joined is fetched again after this (rows in flight)
    # a full exchange with a member that is not synced itself (it restarted too) makes us
    # synced only this long after our start: by then every seed has answered
    sync_grace: float = 3.0
    reconnect_interval: float = 2.0
    tombstone_ttl: float = 1800.0
    dead_rows_ttl: float = 1800.0
    dead_member_ttl: float = 86400.0
    packet_budget: int = 1400
    stream_timeout: float = 5.0

    @classmethod
    def lan(cls) -> GossipConfig:
        return cls()

    @classmethod
    def fast(cls) -> GossipConfig:
        """For integration tests: anti-entropy every 5 s instead of 30 s."""
        return replace(cls(), pushpull_interval=5.0, reconnect_interval=1.0)

    def retransmits(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        base = self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval
        return base, base * self.suspicion_max_mult


def suspicion_timeout(k: int, confirmations: int, low: float, high: float) -> float:
    """Lifeguard: start at `high`, fall towards `low` as independent confirmations arrive.

    remaining = high - (high - low) * ln(c + 1) / ln(k + 1)   (memberlist's formula)
    """
    if k < 1:
        return low
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(low, high - (high - low) * frac)
