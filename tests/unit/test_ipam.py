"""IPAM: pools, gateway, --ip, next free, release, persistence; errors that say what to do."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.core.errors import Conflict, Exhausted, InvalidOption
from pyoverlay.ipam.allocator import Pool, claim, next_free, release
from pyoverlay.ipam.service import IpamService

GW = {"RequestAddressType": "com.docker.network.gateway"}


@pytest.fixture
def ipam(tmp_path: Path) -> IpamService:
    return IpamService(tmp_path / "ipam.json")


async def test_subnet_gateway_and_next_free(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "10.1.0.0/24", "", {}, False)
    assert await ipam.request_address(pool.pool_id, "", GW) == (IPv4Address("10.1.0.1"), 24)
    got = [(await ipam.request_address(pool.pool_id, "", None))[0] for _ in range(3)]
    assert [str(a) for a in got] == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]


async def test_released_address_is_not_reused_at_once(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "10.1.0.0/29", "", {}, False)
    a = (await ipam.request_address(pool.pool_id, "", None))[0]
    await ipam.release_address(pool.pool_id, str(a))
    b = (await ipam.request_address(pool.pool_id, "", None))[0]
    assert a != b


async def test_ip_range_gateway_and_aux(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "10.12.0.0/24", "10.12.0.128/25", {}, False)
    assert (await ipam.request_address(pool.pool_id, "10.12.0.1", GW))[0] == IPv4Address(
        "10.12.0.1"
    )
    assert (await ipam.request_address(pool.pool_id, "10.12.0.5", None))[0] == IPv4Address(
        "10.12.0.5"
    )
    assert (await ipam.request_address(pool.pool_id, "", None))[0] == IPv4Address("10.12.0.128")


async def test_taken_address_is_refused_clearly(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "10.1.0.0/24", "", {}, False)
    await ipam.request_address(pool.pool_id, "10.1.0.9", None)
    with pytest.raises(Conflict, match="address 10.1.0.9 is already in use .* pick another --ip"):
        await ipam.request_address(pool.pool_id, "10.1.0.9", None)


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        (
            ("", "10.1.0.5/24", "", {}, False),
            InvalidOption,
            "has host bits set; did you mean 10.1.0.0/24",
        ),
        (("", "10.1.0.0/33", "", {}, False), InvalidOption, "--subnet 10.1.0.0/33"),
        (
            ("", "10.1.0.0/24", "10.2.0.0/25", {}, False),
            InvalidOption,
            "--ip-range 10.2.0.0/25 is not inside",
        ),
        (("", "", "", {"color": "red"}, False), InvalidOption, "--ipam-opt color=red"),
        (("", "", "", {}, True), InvalidOption, "--ipv6 needs an IPv6 --subnet"),
        (("pyoverlay-global", "fd00:1::/64", "", {}, False), InvalidOption, "swarm-scope network"),
        (("", "fd00:1::/64", "", {}, False), InvalidOption, "is IPv6: add --ipv6"),
        (("", "10.1.0.0/24", "", {}, True), InvalidOption, "asked for an IPv6 pool"),
        (("", "fd00:1::/124", "", {}, True), InvalidOption, "a /48 to /120"),
        (("", "fd00:1::1/64", "", {}, True), InvalidOption, "did you mean fd00:1::/64"),
        (("", "fd00:1::/64", "10.1.0.0/25", {}, True), InvalidOption, "--ip-range 10.1.0.0/25"),
    ],
)
def test_bad_pools(ipam: IpamService, args: tuple, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        ipam.request_pool(*args)
    assert ipam.pools == {}


async def test_an_ipv6_pool_gives_gateway_addresses_and_ip6(tmp_path: Path) -> None:
    ipam = IpamService(tmp_path / "ipam.json")
    pool = ipam.request_pool("", "fd00:100::/64", "", {}, True)
    assert pool.pool_id == "pyoverlay-local:fd00:100::/64"
    assert await ipam.request_address(pool.pool_id, "", GW) == (IPv6Address("fd00:100::1"), 64)
    got = [(await ipam.request_address(pool.pool_id, "", None))[0] for _ in range(2)]
    assert [str(a) for a in got] == ["fd00:100::2", "fd00:100::3"]
    assert (await ipam.request_address(pool.pool_id, "fd00:100::beef", None))[0] == IPv6Address(
        "fd00:100::beef"
    )
    with pytest.raises(Conflict, match="fd00:100::beef is already in use .* pick another --ip"):
        await ipam.request_address(pool.pool_id, "fd00:100::beef", None)
    with pytest.raises(InvalidOption, match="--ip6 10.1.0.5 is IPv4, but the pool"):
        await ipam.request_address(pool.pool_id, "10.1.0.5", None)
    # beside an IPv4 pool of the same network, and both survive a restart
    v4 = ipam.request_pool("", "10.1.0.0/24", "", {}, False)
    again = IpamService(tmp_path / "ipam.json")
    again.load()
    assert set(again.pools) == {pool.pool_id, v4.pool_id}
    assert again.pools[pool.pool_id].allocated == ipam.pools[pool.pool_id].allocated
    assert (await again.request_address(pool.pool_id, "", None))[0] == IPv6Address("fd00:100::4")
    await again.release_address(pool.pool_id, "fd00:100::beef")
    assert IPv6Address("fd00:100::beef") not in again.pools[pool.pool_id].allocated


def test_an_ipv6_subnet_as_a_user_may_write_it(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "FD00:300:0:0::/64", "", {}, True)  # Docker passes it as typed
    assert str(pool.subnet) == "fd00:300::/64"


async def test_an_ipv6_ip_range_and_aux_address(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "fd00:200::/64", "fd00:200::100/120", {}, True)
    # Docker asks for --aux-address while the network is being made: the network's own
    assert (await ipam.request_address(pool.pool_id, "fd00:200::100", None))[0] == IPv6Address(
        "fd00:200::100"
    )
    assert pool.allocated[IPv6Address("fd00:200::100")] == "reserved"
    ipam.network_created("pyoverlay-local", "fd00:200::/64")
    got = (await ipam.request_address(pool.pool_id, "", None))[0]
    assert got == IPv6Address("fd00:200::101")  # inside the range, past the reserved one


def test_overlapping_subnet_is_refused(ipam: IpamService) -> None:
    ipam.request_pool("", "10.1.0.0/16", "", {}, False)
    with pytest.raises(Conflict, match="--subnet 10.1.2.0/24 overlaps 10.1.0.0/16"):
        ipam.request_pool("", "10.1.2.0/24", "", {}, False)


def test_default_pools_come_from_the_documented_range(ipam: IpamService) -> None:
    a = ipam.request_pool("", "", "", {}, False)
    b = ipam.request_pool("", "", "", {}, False)
    assert (str(a.subnet), str(b.subnet)) == ("10.200.0.0/24", "10.200.1.0/24")


async def test_exhaustion_says_what_to_do(ipam: IpamService) -> None:
    pool = ipam.request_pool("", "10.1.0.0/30", "", {}, False)
    await ipam.request_address(pool.pool_id, "", GW)
    await ipam.request_address(pool.pool_id, "", None)
    with pytest.raises(Exhausted, match="no free address left in 10.1.0.0/30 .* larger --subnet"):
        await ipam.request_address(pool.pool_id, "", None)


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = IpamService(tmp_path / "ipam.json")
    pool = first.request_pool("", "10.1.0.0/24", "", {}, False)
    await first.request_address(pool.pool_id, "", GW)
    a = (await first.request_address(pool.pool_id, "", None))[0]
    second = IpamService(tmp_path / "ipam.json")
    second.load()
    assert second.pools[pool.pool_id].allocated == first.pools[pool.pool_id].allocated
    assert (await second.request_address(pool.pool_id, "", None))[0] == a + 1


async def test_unknown_pool(ipam: IpamService) -> None:
    with pytest.raises(Exception, match="pool 'nope' is not known"):
        await ipam.request_address("nope", "", None)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=60))
def test_allocator_never_hands_out_an_address_twice(steps: list[tuple[bool, int]]) -> None:
    pool = Pool("p", IPv4Network("10.9.0.0/28"))
    held: set[IPv4Address] = set()
    for allocate, n in steps:
        if allocate:
            try:
                ip = next_free(pool, "endpoint")
            except Exhausted:
                assert len(held) == 14
                continue
            assert ip not in held and pool.usable(ip)
            held.add(ip)
        elif held:
            ip = sorted(held)[n % len(held)]
            assert release(pool, ip)
            held.discard(ip)
    assert set(pool.allocated) == held
    for ip in held:
        with pytest.raises(Conflict):
            claim(pool, ip, "endpoint")


class NoClaims:
    """A cluster-wide guard that owns nothing and must never be asked for a claim: swarm's
    addresses are unique through the leader's raft store, not through pyoverlay's blocks."""

    clustered = True

    def may_allocate(self, subnet: IPv4Network, ip: IPv4Address) -> bool:
        return False

    def spans(self, subnet: IPv4Network) -> list[IPv4Network]:
        return []

    async def claim(self, subnet, ip=None, within=None) -> None:
        raise AssertionError(f"a cluster claim for a swarm pool ({subnet}, {ip})")

    async def release_subnet(self, subnet: IPv4Network) -> None:
        raise AssertionError("a swarm pool released cluster blocks")

    async def give_back(self, subnet: IPv4Network, ip: IPv4Address) -> None:
        raise AssertionError("a swarm pool gave back a cluster address")

    def to_json(self) -> dict[str, object]:
        return {}

    def load(self, d: dict[str, object]) -> None:
        return None


async def test_the_swarm_leader_allocates_and_a_new_leader_restores(tmp_path: Path) -> None:
    """What swarmkit's allocator does on the leader (global address space): a pool, the
    gateway, an address per VIP and task, no cluster claims; a new leader's allocator asks
    for the pool again and restores every address it recorded, then allocates on."""
    from pyoverlay.ipam.spaces import GLOBAL_SPACE

    ipam = IpamService(tmp_path / "ipam.json", NoClaims())  # type: ignore[arg-type]
    pool = ipam.request_pool(GLOBAL_SPACE, "10.70.0.0/24", "", {}, False)
    gw = GW | {"com.docker.network.ipam.serial": "true"}
    assert (await ipam.request_address(pool.pool_id, "", gw))[0] == IPv4Address("10.70.0.1")
    ipam.network_created(GLOBAL_SPACE, "10.70.0.0/24")
    given = [(await ipam.request_address(pool.pool_id, "", None))[0] for _ in range(3)]
    assert len(set(given)) == 3
    # the plugin restarts while this node leads: the pool is kept (ipam.json)
    again = IpamService(tmp_path / "ipam.json", NoClaims())  # type: ignore[arg-type]
    again.load()
    assert again.pool(pool.pool_id).allocated.keys() >= set(given)
    # leadership moved away and back: a fresh allocator asks again and restores
    pool = again.request_pool(GLOBAL_SPACE, "10.70.0.0/24", "", {}, False)
    assert await again.request_address(pool.pool_id, "10.70.0.1", gw)
    for ip in given:
        assert (await again.request_address(pool.pool_id, str(ip), None))[0] == ip
    new = (await again.request_address(pool.pool_id, "", None))[0]
    assert new not in given and new != IPv4Address("10.70.0.1")


async def test_a_swarm_node_records_the_leaders_addresses_and_chooses_none(
    tmp_path: Path,
) -> None:
    """A node running a task asks its own plugin in the local address space with the
    leader's subnet and addresses preset: recorded as given once the network is known to
    be swarm's, never claimed cluster-wide; nothing is chosen there. The leader's own pool
    (global space) for the same subnet lives beside it on a leader that runs tasks."""
    from pyoverlay.ipam.spaces import GLOBAL_SPACE, LOCAL_SPACE

    ipam = IpamService(tmp_path / "ipam.json", NoClaims())  # type: ignore[arg-type]
    ipam.request_pool(GLOBAL_SPACE, "10.71.0.0/24", "", {}, False)
    pool = ipam.request_pool(LOCAL_SPACE, "10.71.0.0/24", "", {}, False)
    assert await ipam.request_address(pool.pool_id, "10.71.0.1", GW)
    ipam.network_created(LOCAL_SPACE, "10.71.0.0/24", swarm=True)
    assert (await ipam.request_address(pool.pool_id, "10.71.0.9", None))[0] == IPv4Address(
        "10.71.0.9"
    )
    with pytest.raises(InvalidOption, match="come from the swarm leader"):
        await ipam.request_address(pool.pool_id, "", None)
    await ipam.release_address(pool.pool_id, "10.71.0.9")
    await ipam.release_pool(pool.pool_id)


async def test_a_peers_rpc_is_answered_after_its_save_without_stalling_the_loop(
    tmp_path: Path, monkeypatch
) -> None:
    """Cluster IPAM RPCs (claims, loans, releases from other hosts) are answered only once
    the grant is on disk, but the write happens off the event loop: gossip's probes and
    Docker's requests go on while a slow disk syncs (here: a 0.5 s write)."""
    import asyncio
    import time

    from pyoverlay.core.store import JsonDocument
    from pyoverlay.ipam.cluster import ClusterGuard

    ipam = IpamService(tmp_path / "ipam.json")
    guard = ClusterGuard("me", None, ipam.save, ipam.save_async)  # type: ignore[arg-type]
    ipam.guard = guard
    real = JsonDocument.write

    def slow(self: JsonDocument, body: str) -> None:
        time.sleep(0.5)
        real(self, body)

    monkeypatch.setattr(JsonDocument, "write", slow)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        for _ in range(40):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())  # noqa: RUF006 - awaited below
    await asyncio.sleep(0.05)  # the ticker runs
    reply = await guard.handle_release({"subnet": "10.9.0.0/24", "block": "10.9.0.0/28"})
    await tick
    assert reply == {}
    assert (tmp_path / "ipam.json").exists()  # on disk when answered
    assert max(gaps) < 0.25, max(gaps)  # the loop ran on meanwhile


class Alone:
    """A claim transport with nobody else in the cluster (a majority of one)."""

    def members(self) -> list[tuple[str, str, str]]:
        return []

    async def call(self, addr, kind, body, timeout):
        return None

    def publish(self, scope, key, value) -> None:
        pass

    def withdraw(self, scope, key) -> None:
        pass

    def rows(self, scope):
        return []


async def test_a_claim_right_after_start_waits_for_the_first_sync(monkeypatch) -> None:
    """`docker run` right after the plugin started: the block claim waits (bounded) for the
    first sync instead of refusing; with no sync at all it says why, after the wait."""
    import asyncio

    from pyoverlay.ipam import cluster

    monkeypatch.setattr(cluster, "SYNC_WAIT", 0.3)
    guard = cluster.ClusterGuard("me", Alone(), lambda: None)
    subnet = IPv4Network("10.9.0.0/24")
    with pytest.raises(Conflict, match="has not synced"):
        await guard.claim(subnet, None)
    asyncio.get_running_loop().call_later(0.1, setattr, guard, "synced", True)
    await guard.claim(subnet, None)  # waited for the sync, then took a block
    assert any(guard.may_allocate(subnet, ip) for ip in subnet.hosts())


@pytest.mark.parametrize(
    ("subnet", "ip_range", "spans", "cursor", "want"),
    [
        # the cursor in a later block: on from there, then around to the first block
        ("10.5.0.0/24", None, ["10.5.0.16/28", "10.5.0.48/28"], "10.5.0.50", "10.5.0.51"),
        ("10.5.0.0/24", None, ["10.5.0.16/28", "10.5.0.48/28"], "10.5.0.63", "10.5.0.16"),
        # a cursor outside every owned block: the first owned address
        ("10.5.0.0/24", None, ["10.5.0.48/28"], "10.5.0.3", "10.5.0.48"),
        # an --ip-range narrower than a block, and one wider
        ("10.5.0.0/24", "10.5.0.52/30", ["10.5.0.48/28"], None, "10.5.0.52"),
        ("10.5.0.0/24", "10.5.0.0/25", ["10.5.0.128/28", "10.5.0.32/28"], None, "10.5.0.32"),
        # IPv6 /120 blocks, wrapping inside the one owned
        ("fd00:5::/64", None, ["fd00:5::100/120"], "fd00:5::1ff", "fd00:5::100"),
    ],
)
def test_next_free_walks_only_the_owned_blocks(
    subnet: str, ip_range: str | None, spans: list[str], cursor: str | None, want: str
) -> None:
    from ipaddress import ip_address, ip_network

    pool = Pool("p", ip_network(subnet), ip_network(ip_range) if ip_range else None)
    pool.cursor = ip_address(cursor) if cursor else None
    assert str(next_free(pool, "endpoint", spans=[ip_network(s) for s in spans])) == want


def test_next_free_with_no_owned_block_is_exhausted_at_once() -> None:
    pool = Pool("p", IPv4Network("10.5.0.0/16"))
    with pytest.raises(Exhausted):
        next_free(pool, "endpoint", spans=[])
