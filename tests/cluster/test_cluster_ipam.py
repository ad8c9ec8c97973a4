"""Cluster-wide IPAM: no address is ever handed out twice, across concurrency, partitions,
rejoins and restarts; a cut-off host keeps allocating from its own blocks and
otherwise says why it cannot.

The hosts are real IpamService + ClusterGuard objects; only the transport
between them is fake (in-process calls that a partition can cut).
"""

from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.ipam.cluster import CLAIM, ClusterGuard
from pyoverlay.ipam.service import IpamService
from pyoverlay.state.errors import Conflict, PyoverlayError

SUBNET = "10.40.0.0/24"  # 16 blocks of 16


class Net:
    def __init__(self) -> None:
        self.hosts: dict[str, FakeTransport] = {}
        self.side: dict[str, int] = {}

    def reachable(self, a: str, b: str) -> bool:
        return self.side.get(a, 0) == self.side.get(b, 0)

    def heal(self) -> None:
        self.side = {}
        rows: dict[tuple[str, str], tuple[dict[str, Any], tuple[int, str]]] = {}
        for t in self.hosts.values():  # anti-entropy after the heal
            for k, v in t.table.items():
                if k not in rows or rows[k][1] < v[1]:
                    rows[k] = v
        for t in self.hosts.values():
            t.table = dict(rows)


class FakeTransport:
    def __init__(self, net: Net, name: str) -> None:
        self.net, self.name = net, name
        self.guard: ClusterGuard | None = None
        self.table: dict[tuple[str, str], tuple[dict[str, Any], tuple[int, str]]] = {}
        self.clock = 0
        net.hosts[name] = self

    def voters(self) -> list[tuple[str, str, bool]]:
        return [(n, n, self.net.reachable(self.name, n)) for n in self.net.hosts]

    async def call(self, addr: str, kind: str, body: dict[str, Any], timeout: float):
        await asyncio.sleep(0)  # let concurrent claims interleave
        if not self.net.reachable(self.name, addr):
            return None
        guard = self.net.hosts[addr].guard
        assert guard is not None
        return guard.handle_claim(body) if kind == CLAIM else guard.handle_release(body)

    def publish(self, scope: str, key: str, value: dict[str, Any]) -> None:
        self.clock += 1
        for t in self.net.hosts.values():
            if self.net.reachable(self.name, t.name):
                t.table[(scope, key)] = (value, (self.clock, self.name))

    def withdraw(self, scope: str, key: str) -> None:
        for t in self.net.hosts.values():
            if self.net.reachable(self.name, t.name):
                t.table.pop((scope, key), None)

    def rows(self, scope: str):
        return [(k, v, ver) for (s, k), (v, ver) in self.table.items() if s == scope]


def host(net: Net, name: str, state: Path) -> IpamService:
    t = net.hosts.get(name) or FakeTransport(net, name)
    ipam = IpamService(state / f"{name}.json")
    guard = ClusterGuard(name, t, ipam.save)
    ipam.guard = guard
    t.guard = guard
    ipam.load()
    return ipam


async def make(n: int, tmp: Path) -> tuple[Net, dict[str, IpamService], dict[str, str]]:
    net = Net()
    hosts = {f"h{i}": host(net, f"h{i}", tmp) for i in range(n)}
    pools = {}
    for name, ipam in hosts.items():
        pools[name] = ipam.request_pool("", SUBNET, "", {}, False).pool_id
        await ipam.request_address(
            pools[name], "", {"RequestAddressType": "com.docker.network.gateway"}
        )
    return net, hosts, pools


def in_use(hosts: dict[str, IpamService], pools: dict[str, str]) -> dict[IPv4Address, list[str]]:
    seen: dict[IPv4Address, list[str]] = {}
    for name, ipam in hosts.items():
        for ip, purpose in ipam.pools[pools[name]].allocated.items():
            if purpose == "endpoint":
                seen.setdefault(ip, []).append(name)
    return seen


async def test_concurrent_docker_runs_on_three_hosts_never_collide(tmp_path: Path) -> None:
    net, hosts, pools = await make(3, tmp_path)
    results = await asyncio.gather(
        *(hosts[f"h{i % 3}"].request_address(pools[f"h{i % 3}"], "", None) for i in range(60))
    )
    ips = [ip for ip, _ in results]
    assert len(set(ips)) == 60
    assert all(len(v) == 1 for v in in_use(hosts, pools).values())


async def test_a_cut_off_host_uses_its_blocks_then_says_why_it_cannot_go_on(tmp_path: Path) -> None:
    net, hosts, pools = await make(3, tmp_path)
    h0 = hosts["h0"]
    await h0.request_address(pools["h0"], "", None)  # h0 owns one block now (16 addresses)
    net.side = {"h0": 1}  # h0 cut off from h1, h2
    pool = h0.pools[pools["h0"]]
    free = [
        ip
        for s, b in h0.guard.ownership.owned  # type: ignore[attr-defined]
        for ip in IPv4Network(b)
        if pool.usable(ip) and ip not in pool.allocated
    ]
    got = [await h0.request_address(pools["h0"], "", None) for _ in free]
    assert sorted(ip for ip, _ in got) == sorted(free) and len(got) >= 13
    with pytest.raises(Conflict) as err:
        await h0.request_address(pools["h0"], "", None)
    assert "needs a majority of the pyoverlay hosts" in str(err.value)
    assert "1 of 3 hosts granted" in str(err.value)
    # the majority side goes on
    await hosts["h1"].request_address(pools["h1"], "", None)


async def test_an_address_in_another_hosts_block_is_refused_by_name(tmp_path: Path) -> None:
    net, hosts, pools = await make(2, tmp_path)
    ip, _ = await hosts["h0"].request_address(pools["h0"], "", None)
    other = str(ip + 1)
    with pytest.raises(
        PyoverlayError, match=f"address {other} is in block .* which pyoverlay host h0 owns"
    ):
        await hosts["h1"].request_address(pools["h1"], other, None)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 4), st.integers(1, 6)),
        st.tuples(st.just("release"), st.integers(0, 4), st.integers(0, 100)),
        st.tuples(st.just("partition"), st.integers(1, 31), st.just(0)),
        st.tuples(st.just("heal"), st.just(0), st.just(0)),
        st.tuples(st.just("restart"), st.integers(0, 4), st.just(0)),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**16))
def test_no_duplicates_under_random_allocations_partitions_rejoins_and_restarts(
    ops, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("ipam")
    rnd = random.Random(seed)

    async def run() -> None:
        net, hosts, pools = await make(5, tmp)
        for op, a, b in ops:
            if op == "alloc":  # b concurrent docker runs on host a
                await asyncio.gather(
                    *(hosts[f"h{a}"].request_address(pools[f"h{a}"], "", None) for _ in range(b)),
                    return_exceptions=True,
                )
            elif op == "release":
                mine = [
                    ip
                    for ip, p in hosts[f"h{a}"].pools[pools[f"h{a}"]].allocated.items()
                    if p == "endpoint"
                ]
                if mine:
                    hosts[f"h{a}"].release_address(pools[f"h{a}"], str(mine[b % len(mine)]))
            elif op == "partition":  # a bitmask says which hosts are on side 1
                net.side = {f"h{i}": (a >> i) & 1 for i in range(5)}
            elif op == "heal":
                net.heal()
            elif op == "restart":  # the plugin restarts from its state file
                hosts[f"h{a}"] = host(net, f"h{a}", tmp)
            dup = {ip: names for ip, names in in_use(hosts, pools).items() if len(names) > 1}
            assert not dup, (op, a, b, dup)
        _ = rnd

    asyncio.run(run())


async def test_a_released_pool_gives_its_blocks_back_to_the_cluster(tmp_path: Path) -> None:
    net, hosts, pools = await make(3, tmp_path)
    ip, _ = await hosts["h0"].request_address(pools["h0"], "", None)
    neighbour = str(ip + 1)
    with pytest.raises(PyoverlayError, match="which pyoverlay host h0 owns"):
        await hosts["h1"].request_address(pools["h1"], neighbour, None)
    await hosts["h0"].release_pool(pools["h0"])  # `docker network rm` on h0
    got, _ = await hosts["h1"].request_address(pools["h1"], neighbour, None)
    assert str(got) == neighbour
