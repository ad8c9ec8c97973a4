"""Where the driver publishes its endpoints and reads everybody else's.

`PeerDirectory` is the driver's whole view of the cluster: publish/withdraw
rows it owns, read the visible rows of a scope.  The gossip runtime
implements it cluster-wide (pyoverlay.cluster.runtime); `LocalDirectory`
is the single-host stand-in (and the unit tests' fake).
"""

from __future__ import annotations

from typing import Any, Protocol


class PeerDirectory(Protocol):
    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        """Announce a row this host owns (non-blocking)."""
        ...

    def withdraw(self, scope: str, key: str) -> None:
        """Delete a row this host owns (non-blocking)."""
        ...

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        """Visible rows of a scope: (key, value, version)."""
        ...

    def generation(self, scope: str) -> int:
        """A number that changes whenever the rows of `scope` change."""
        ...

    def join_network(self, net: str) -> None:
        """Receive and keep the rows of network `net` (`peer/<net>`) from now on."""
        ...

    def leave_network(self, net: str) -> None:
        """Stop receiving `net`'s rows; other hosts' rows of it are forgotten."""
        ...

    async def network_ready(self, net: str, timeout: float) -> bool:
        """Wait at most `timeout` until `net`'s rows have been fetched; False if not."""
        ...

    def rows_complete(self, net: str) -> bool:
        """True once `net`'s rows have been fetched from a host in it (or nobody else is
        in it): only then may an entry its rows lack be removed from the kernel."""
        ...

    def kept_vteps(self) -> frozenset[str]:
        """VTEPs of hosts whose pyoverlay is silent but whose kernel still answers: the
        kernel entries of their containers stay, though their rows are gone."""
        ...


class LocalDirectory:
    """One host, no gossip: rows go nowhere, only this host's are visible."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self.clock = 0
        self.data: dict[str, dict[str, tuple[dict[str, Any], tuple[int, str]]]] = {}
        self.networks: set[str] = set()  # joined (there is nobody to fetch rows from)
        self.changes = 0

    def put(self, scope: str, key: str, value: dict[str, Any], version: tuple[int, str]) -> None:
        """A row as if another host had written it (tests and benchmarks)."""
        self.data.setdefault(scope, {})[key] = (value, version)
        self.changes += 1

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        self.clock += 1
        self.put(scope, key, value, (self.clock, self.node))

    def withdraw(self, scope: str, key: str) -> None:
        self.data.get(scope, {}).pop(key, None)
        self.changes += 1

    def generation(self, scope: str) -> int:
        return self.changes

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        return [(k, v, ver) for k, (v, ver) in self.data.get(scope, {}).items()]

    def join_network(self, net: str) -> None:
        self.networks.add(net)

    def leave_network(self, net: str) -> None:
        self.networks.discard(net)

    async def network_ready(self, net: str, timeout: float) -> bool:
        return True

    def rows_complete(self, net: str) -> bool:
        return True

    def kept_vteps(self) -> frozenset[str]:
        return frozenset()


_: PeerDirectory = LocalDirectory()

Row = tuple[dict[str, Any], tuple[int, str]]  # (value, version)


class KeptRows:
    """A scope's rows as a reader should use them: the visible rows, and the last rows
    of each host whose plugin is silent while the host answers (`kept_vteps`). That
    host's rows are gone from the directory, but its kernel and containers are not: as
    its FDB/ARP entries, its tasks stay in VIPs and the mesh until the host is gone.
    `where` names the row field holding the host's underlay address. The directory is
    given at each read: the driver's is replaced once gossip runs (plugin/server.py)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.last: dict[str, dict[str, Row]] = {}  # scope -> the rows last returned

    def rows(self, directory: PeerDirectory, scope: str) -> dict[str, Row]:
        rows = {key: (value, version) for key, value, version in directory.rows(scope)}
        kept = directory.kept_vteps()
        for key, (value, version) in self.last.get(scope, {}).items():
            if key not in rows and str(value.get(self.where)) in kept:
                rows[key] = (value, version)
        if rows:
            self.last[scope] = rows
        else:  # a deleted network, a withdrawn mesh: nothing left to remember
            self.last.pop(scope, None)
        return rows
