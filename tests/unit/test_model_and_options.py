"""Names, MACs, VNIs and `docker network create -o` parsing: pure functions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyoverlay.core.errors import InvalidOption
from pyoverlay.driver.core.model import (
    IFNAMSIZ,
    Underlay,
    derive_vni,
    mac_from_ip,
    namespace_name,
    ownership_marker,
    parse_marker,
    veth_names,
    vxlan_name,
)
from pyoverlay.driver.core.options import PoolData, parse_network

HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
UNDERLAY = Underlay(IPv4Address("192.0.2.10"), 4789, 1500)
POOL = [PoolData("10.1.0.0/24", "10.1.0.1/24")]
POOL6 = [PoolData("fd00:100::/64", "fd00:100::1/64")]


@given(HEX64, st.integers(1, 2**24 - 1))
def test_kernel_names_fit_ifnamsiz_and_carry_our_prefixes(nid: str, vni: int) -> None:
    assert namespace_name(nid) == f"1-{nid[:10]}"
    vx = vxlan_name(vni, nid)
    assert vx.startswith("pvx") and len(vx) <= IFNAMSIZ
    for name in veth_names(nid):
        assert len(name) <= IFNAMSIZ
    assert veth_names(nid)[0].startswith("pyc") and veth_names(nid)[1].startswith("pyv")


def test_mac_is_0242_plus_the_address_bytes_as_in_the_seed() -> None:
    assert mac_from_ip(IPv4Address("101.0.0.3")) == "02:42:65:00:00:03"


@given(st.integers(0, 2**32 - 1), st.integers(8, 30))
def test_derived_vni_is_stable_and_in_the_upper_range(addr: int, plen: int) -> None:
    subnet = IPv4Network((addr, plen), strict=False)
    vni = derive_vni(subnet)
    assert 2**23 <= vni <= 2**24 - 1
    assert derive_vni(IPv4Network(str(subnet))) == vni


def test_marker_round_trip_and_foreign_aliases() -> None:
    assert parse_marker(ownership_marker("n1", "abc")) == ("n1", "abc")
    for alias in (None, "", "docker", "pyoverlay:", "pyoverlay:n1", "pyoverlay:a:b:c"):
        assert parse_marker(alias) is None


def parse(generic: dict[str, object], **kw: object):
    args: dict[str, object] = {
        "network_id": "a" * 64,
        "generic": generic,
        "ipv4": POOL,
        "ipv6": [],
        "enable_ipv6": False,
        "internal": False,
        "underlay": UNDERLAY,
    }
    args.update(kw)
    return parse_network(**args)  # type: ignore[arg-type]


def test_defaults_are_derived_vni_and_underlay_mtu_minus_50() -> None:
    spec = parse({})
    assert spec.vni == derive_vni(IPv4Network("10.1.0.0/24"))
    assert spec.mtu == 1450
    assert str(spec.gateway) == "10.1.0.1/24"


def test_a_dual_stack_network_keeps_its_ipv6_subnet_and_gateway() -> None:
    spec = parse({}, enable_ipv6=True, ipv6=POOL6)
    assert (str(spec.subnet6), str(spec.gateway6)) == ("fd00:100::/64", "fd00:100::1/64")
    assert spec.vni == derive_vni(IPv4Network("10.1.0.0/24"))  # the IPv4 subnet names it
    assert type(spec).from_json(spec.to_json()) == spec
    assert "subnet6" not in parse({}).to_json()  # an IPv4 network's state is as before


def test_explicit_vni_and_mtu() -> None:
    spec = parse({"vni": "4097", "com.docker.network.driver.mtu": "1400"})
    assert (spec.vni, spec.mtu) == (4097, 1400)


@pytest.mark.parametrize(
    ("generic", "kw", "message"),
    [
        (
            {"vni": "abc"},
            {},
            "-o vni=abc: the VXLAN network id must be a whole number from 1 to 16777215",
        ),
        ({"vni": "0"}, {}, "-o vni=0: the VXLAN network id must be from 1 to 16777215"),
        ({"vni": "16777216"}, {}, "-o vni=16777216"),
        ({"com.docker.network.driver.mtu": "9000"}, {}, "must be from 576 to 1450"),
        ({"com.docker.network.driver.mtu": "big"}, {}, "whole number"),
        ({"encrypted": "maybe"}, {}, "-o encrypted=maybe: give -o encrypted (or =true|"),
        (
            {"encrypted": "", "com.docker.network.driver.mtu": "1450"},
            {},
            "-o com.docker.network.driver.mtu=1450: the MTU (at most the underlay's 1500 minus "
            "50 bytes of VXLAN header and 40 of ESP) must be from 576 to 1410",
        ),
        ({"foo": "1", "bar": "2"}, {}, "unknown network options -o bar=2, -o foo=1"),
        ({}, {"enable_ipv6": True}, "with --ipv6 has exactly one IPv6 --subnet, got 0"),
        ({}, {"enable_ipv6": True, "ipv6": POOL6 * 2}, "exactly one IPv6 --subnet, got 2"),
        (
            {},
            {"enable_ipv6": True, "ipv6": [PoolData("fd00:100::/64", "fd00:200::1/64")]},
            "--gateway fd00:200::1 is outside --subnet fd00:100::/64",
        ),
        (
            {"com.docker.network.driver.mtu": "1200"},
            {"enable_ipv6": True, "ipv6": POOL6},
            "the network's MTU 1200 is below IPv6's minimum 1280",
        ),
        ({"pyoverlay.vni": "4100"}, {"enable_ipv6": True, "ipv6": POOL6}, "swarm-scope network"),
        ({}, {"ipv4": [*POOL, PoolData("fd00:1::/64")]}, "swarm-scope network"),
        ({}, {"ipv4": []}, "exactly one IPv4 subnet, got 0"),
        ({}, {"ipv4": POOL * 2}, "exactly one IPv4 subnet, got 2"),
    ],
)
def test_bad_options_name_the_field_and_the_fix(
    generic: dict[str, object], kw: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidOption) as err:
        parse(generic, **kw)
    assert message in str(err.value)
