"""Pure parts of the hardening: peer pruning gate, anti-replay, network identity."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.cluster.replay import ReplayGuard, Stamp
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.model import NetworkSpec
from pyoverlay.driver.core.ops import DeleteFdb, DeleteNeigh, ReplaceFdb, ReplaceNeigh
from pyoverlay.driver.overlay import identity, peers

A, B = IPv4Address("192.0.2.2"), IPv4Address("192.0.2.3")
MAC1, MAC2 = "02:42:0a:00:00:02", "02:42:0a:00:00:03"
IP1, IP2 = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")


def test_without_prune_a_restart_removes_nothing_but_still_fixes_and_adds() -> None:
    have = PeerEntries(fdb={MAC1: A, MAC2: A}, neigh={IP1: MAC1, IP2: MAC2})
    # the table after a restart knows only that MAC2 moved to host B
    want = PeerEntries(fdb={MAC2: B}, neigh={IP2: MAC2})
    gated = peers.diff("ns", "vx", have, want, prune=False)
    assert gated == [DeleteFdb("ns", "vx", MAC2, A), ReplaceFdb("ns", "vx", MAC2, B)]
    full = peers.diff("ns", "vx", have, want, prune=True)
    assert DeleteNeigh("ns", "vx", IP1) in full and DeleteFdb("ns", "vx", MAC1, A) in full
    empty = peers.diff("ns", "vx", have, PeerEntries(), prune=False)
    assert empty == []
    new = peers.diff("ns", "vx", PeerEntries(), want, prune=False)
    assert ReplaceNeigh("ns", "vx", IP2, MAC2) in new


def test_replays_stale_and_old_epochs_are_refused() -> None:
    g = ReplayGuard(window=8, max_age_s=60)
    now = 1_000_000
    s = Stamp("a", 5, 1, now)
    assert g.check(s, now) is None
    assert g.check(s, now) == "replay"
    assert g.check(Stamp("a", 5, 3, now), now) is None
    assert g.check(Stamp("a", 5, 2, now), now) is None  # reordered, inside the window
    assert g.check(Stamp("a", 4, 99, now), now) == "replay"  # an older process of a
    assert g.check(Stamp("a", 5, 7, now - 61_000), now) == "stale"
    assert g.check(Stamp("a", 5, 7, now + 61_000), now) == "stale"
    assert g.check(Stamp("a", 6, 1, now), now) is None  # a restarted a starts afresh
    assert g.check(Stamp("a", 5, 50, now), now) == "replay"


@settings(max_examples=200)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=200))
def test_each_counter_is_accepted_at_most_once(counters: list[int]) -> None:
    g = ReplayGuard(window=16, max_age_s=60)
    accepted = [c for c in counters if g.check(Stamp("a", 1, c, 0), 0) is None]
    assert len(accepted) == len(set(accepted))


def net(subnet: str = "100.0.0.0/24", mtu: int = 1450, **kw: object) -> NetworkSpec:
    return NetworkSpec(
        "n" * 64,
        9000,
        IPv4Network(subnet),
        IPv4Interface(str(IPv4Network(subnet).network_address + 1) + "/24"),
        mtu,
        **kw,  # type: ignore[arg-type]
    )


def test_hosts_that_disagree_on_a_vni_are_named_with_the_difference() -> None:
    mine = net(aux=("100.0.0.130",))
    rows = [
        ("me", identity.record(mine)),
        ("h2", identity.record(mine)),
        ("h3", identity.record(net(mtu=1400, aux=("100.0.0.130",)))),
        ("h4", identity.record(net("100.9.0.0/24"))),
    ]
    got = identity.disagreements(mine, rows, "me")
    assert set(got) == {"h3", "h4"}
    assert got["h3"] == ["mtu 1450 here, 1400 there"]
    assert "subnet 100.0.0.0/24 here, 100.9.0.0/24 there" in got["h4"]
    assert "aux 100.0.0.130 here, none there" in got["h4"]


def test_dual_stack_hosts_must_agree_on_the_ipv6_side_too() -> None:
    six = {"subnet6": IPv6Network("fd00:9::/64"), "gateway6": IPv6Interface("fd00:9::1/64")}
    mine = net(**six)
    other6 = {"subnet6": IPv6Network("fd00:8::/64"), "gateway6": IPv6Interface("fd00:8::1/64")}
    rows = [
        ("h2", identity.record(net(**other6))),  # another IPv6 subnet, one VNI
        ("h3", identity.record(net())),  # --ipv6 left out there
        ("h4", identity.record(mine)),
    ]
    got = identity.disagreements(mine, rows, "me")
    assert set(got) == {"h2", "h3"}
    assert "subnet6 fd00:9::/64 here, fd00:8::/64 there" in got["h2"]
    assert "subnet6 fd00:9::/64 here, none there" in got["h3"]
    # an IPv4-only network's row is what an older plugin writes: no new key to differ on
    assert set(identity.record(net())) == {"subnet", "mtu", "internal", "gateway", "aux"}


def test_a_cluster_network_needs_an_identity_from_the_user() -> None:
    assert identity.needs_identity(net(), "pyoverlay-local") is None
    assert identity.needs_identity(net(options={"vni": "9000"}), "LocalDefault") is None
    why = identity.needs_identity(net(), "LocalDefault")
    assert why is not None and "--ipam-driver pyoverlay with --subnet" in why and "-o vni=N" in why
