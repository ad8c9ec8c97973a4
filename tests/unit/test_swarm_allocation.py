"""AllocateNetwork on the swarm leader: one VNI per swarm network, the same after a failover."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyoverlay.core.errors import InvalidOption
from pyoverlay.driver.core.model import DERIVED_VNI_BASE
from pyoverlay.driver.overlay.swarm import (
    ALLOCATED_VNI,
    SwarmAllocations,
    derived_vni,
    plan_allocation,
)


def test_options_are_echoed_with_the_vni_and_a_new_leader_agrees(tmp_path: Path) -> None:
    leader = SwarmAllocations(tmp_path / "a.json")
    out = leader.allocate("1dqhtgwc891yp78i2bk7cwdcy", {"com.docker.network.driver.mtu": "1400"})
    vni = int(out[ALLOCATED_VNI])
    assert out["com.docker.network.driver.mtu"] == "1400" and vni >= DERIVED_VNI_BASE
    assert vni >= 4096  # never in swarm's own overlay range... and far above it
    assert leader.allocate("1dqhtgwc891yp78i2bk7cwdcy", {}) == {ALLOCATED_VNI: str(vni)}
    # a new leader with no state gets our earlier answer back as input: it keeps the VNI
    other = SwarmAllocations(tmp_path / "b.json")
    assert other.allocate("1dqhtgwc891yp78i2bk7cwdcy", out) == out
    # and persisted: the same leader restarted
    assert SwarmAllocations(tmp_path / "a.json").held == {"1dqhtgwc891yp78i2bk7cwdcy": vni}
    leader.free("1dqhtgwc891yp78i2bk7cwdcy")
    assert SwarmAllocations(tmp_path / "a.json").held == {}


def test_user_vni_is_honoured_and_clashes_and_unsupported_options_are_refused() -> None:
    vni, out = plan_allocation("n1", {"vni": "700"}, {})
    assert vni == 700 and out == {"vni": "700", ALLOCATED_VNI: "700"}
    with pytest.raises(InvalidOption, match="-o vni=700 is already used by another swarm network"):
        plan_allocation("n2", {"vni": "700"}, {"n1": 700})
    # -o encrypted reaches every node (the leader's answer is all they get)
    assert plan_allocation("n3", {"encrypted": ""}, {})[1]["encrypted"] == ""
    with pytest.raises(InvalidOption, match="-o encrypted=sometimes: give -o encrypted"):
        plan_allocation("n3", {"encrypted": "sometimes"}, {})
    with pytest.raises(InvalidOption, match="unknown network option -o foo=bar"):
        plan_allocation("n3", {"foo": "bar"}, {})


@given(ids=st.lists(st.text(min_size=1, max_size=25), min_size=1, max_size=30, unique=True))
def test_derived_vnis_never_collide_on_one_leader(ids: list[str]) -> None:
    held: dict[str, int] = {}
    for nid in ids:
        vni, _ = plan_allocation(nid, {}, held)
        held[nid] = vni
    assert len(set(held.values())) == len(ids)
    assert derived_vni("x", set()) == derived_vni("x", set())
