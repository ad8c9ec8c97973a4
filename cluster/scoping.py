"""PURE: which rows belong to a network, and which hosts take part in which network.

Docker's networkdb keeps a network's table rows only on the hosts that have
joined that network; pyoverlay does the same.  A row whose scope is
`<table>/<net>` with `<table>` in NETWORK_TABLES (the driver's `peer/<vni>`
endpoint rows) is a network row: a host stores it only while it takes part
in `<net>` (or owns it), and gossip carries it only to such hosts.  Every
other row (network specs, IPAM blocks) and the membership go everywhere.

Who takes part in what is itself a global row: scope SUBSCRIPTIONS, key =
host name, value {"nets": [...]}, so it travels, is versioned and is hidden
with its dead owner like any other row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NETWORK_TABLES = ("peer",)  # GossipConfig.network_tables; () replicates every row everywhere
SUBSCRIPTIONS = "sub"


def network_of(scope: str, tables: tuple[str, ...] = NETWORK_TABLES) -> str | None:
    """The network a row of `scope` belongs to, or None for a row every host keeps."""
    table, _, net = scope.partition("/")
    return net if table in tables and net else None


def subscription(nets: Iterable[str]) -> dict[str, Any]:
    return {"nets": sorted(set(nets))}


def parse_subscription(value: dict[str, Any] | None) -> frozenset[str]:
    nets = (value or {}).get("nets")
    if not isinstance(nets, list):
        return frozenset()
    return frozenset(str(n) for n in nets[:4096] if isinstance(n, str | int))


class Interest:
    """Other hosts' networks, as their subscription rows say (visible rows only)."""

    def __init__(self) -> None:
        self.by_node: dict[str, frozenset[str]] = {}
        self.by_net: dict[str, set[str]] = {}

    def update(self, node: str, value: dict[str, Any] | None) -> frozenset[str]:
        """Record `node`'s subscription row (None: gone); returns the networks it joined."""
        new = parse_subscription(value)
        old = self.by_node.get(node, frozenset())
        for net in old - new:
            members = self.by_net.get(net)
            if members is not None:
                members.discard(node)
                if not members:
                    del self.by_net[net]
        for net in new - old:
            self.by_net.setdefault(net, set()).add(node)
        if new:
            self.by_node[node] = new
        else:
            self.by_node.pop(node, None)
        return new - old

    def wants(self, node: str, net: str | None) -> bool:
        return net is None or net in self.by_node.get(node, ())

    def members(self, net: str) -> set[str]:
        return self.by_net.get(net, set())
