"""Simulated xfrm tables and `ipsec` rows for the IPsec keeper (driver/secure/keeper.py):
the unit tests' rotation runs and the keeper benchmark use them. A packet is lost when
the receiver has no state with the sender's SPI and key."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyoverlay.driver.secure.sa import MESH_PORT, InstalledSa


def _policy(w: list[str]) -> tuple[IPv4Address, IPv4Address, int]:
    """(local, peer, port) of a policy line's words (sa.policy_line); the mesh's has no
    protocol (port MESH_PORT)."""
    port = int(w[12]) if w[9] == "proto" else MESH_PORT
    return (IPv4Address(w[6].split("/")[0]), IPv4Address(w[8].split("/")[0]), port)


class SimXfrm:
    """One host's xfrm states: ident -> (key, packets, added); the newest outbound state
    to a peer is the one the kernel sends with (as xfrm_state_find prefers it)."""

    def __init__(self) -> None:
        self.states: dict[tuple[IPv4Address, IPv4Address, int], list[Any]] = {}
        self.policies: set[tuple[IPv4Address, IPv4Address, int]] = set()
        self.clock = 0.0
        self.most = 0  # the most packets any outbound SA has sent

    async def states_(self) -> list[InstalledSa]:
        return [InstalledSa(s, d, spi, v[1], v[2]) for (s, d, spi), v in self.states.items()]

    async def policies_(self) -> list[tuple[IPv4Address, IPv4Address, int]]:
        return sorted(self.policies)

    async def batch(self, lines: Sequence[str]) -> list[str]:
        errors = []
        for line in lines:
            w = line.split()
            if w[:3] == ["xfrm", "state", "add"]:
                ident = (IPv4Address(w[4]), IPv4Address(w[6]), int(w[10], 16))
                if ident in self.states:
                    errors.append(f"EEXIST {line[:40]}")
                    continue
                key = bytes.fromhex(w[w.index("aead") + 2][2:])
                self.states[ident] = [key, 0, self.clock]
            elif w[:3] == ["xfrm", "state", "delete"]:
                self.states.pop((IPv4Address(w[4]), IPv4Address(w[6]), int(w[10], 16)), None)
            elif w[:3] == ["xfrm", "policy", "update"]:
                self.policies.add(_policy(w))
            elif w[:3] == ["xfrm", "policy", "delete"]:
                self.policies.discard(_policy(w))
        return errors

    async def probe(self) -> str | None:
        return None

    def send(self, src: IPv4Address, dst: IPv4Address, peer: SimXfrm) -> bool:
        """One packet src->dst: encrypted with our newest outbound SA, opened by the
        peer's state of that SPI and key; False if it is lost (or would go out plain)."""
        if (src, dst, 4789) not in self.policies:
            return False
        outs = [(v[2], i) for i, v in self.states.items() if i[0] == src and i[1] == dst]
        if not outs:
            return False
        _, ident = max(outs)
        self.states[ident][1] += 1
        self.most = max(self.most, self.states[ident][1])
        got = peer.states.get(ident)
        if got is None or got[0] != self.states[ident][0]:
            return False
        got[1] += 1
        return True


class SimXfrmAdapter:
    def __init__(self, sim: SimXfrm) -> None:
        self.sim = sim

    async def states(self) -> list[InstalledSa]:
        return await self.sim.states_()

    async def policies(self) -> list[tuple[IPv4Address, IPv4Address, int]]:
        return await self.sim.policies_()

    async def batch(self, lines: Sequence[str]) -> list[str]:
        return await self.sim.batch(lines)

    async def probe(self) -> str | None:
        return None


class SharedRows:
    """The replicated table's `ipsec` scope (every host sees every row at once)."""

    def __init__(self) -> None:
        self.rows_: dict[str, dict[str, Any]] = {}

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        self.rows_[key] = value

    def withdraw(self, scope: str, key: str) -> None:
        self.rows_.pop(key, None)

    def rows(self, scope: str) -> list[tuple[str, dict[str, Any], tuple[int, str]]]:
        return [(k, v, (0, k)) for k, v in self.rows_.items()]


class NoTables:
    async def apply(self, netns: Path | None, commands: list[dict[str, Any]]) -> None:
        pass

    async def list_table(self, netns: Path | None, family: str, name: str) -> Any | None:
        return None

    async def forget_flows(
        self, netns: Path | None, vip: IPv4Address, gone: Collection[IPv4Address]
    ) -> int:
        return 0

    def close(self) -> None:
        pass
