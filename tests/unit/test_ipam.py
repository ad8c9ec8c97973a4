"""IPAM: pools, gateway, --ip, next free, release, persistence; errors that say what to do."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
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
        (("", "", "", {}, True), InvalidOption, "remove --ipv6"),
    ],
)
def test_bad_pools(ipam: IpamService, args: tuple, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        ipam.request_pool(*args)
    assert ipam.pools == {}


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
