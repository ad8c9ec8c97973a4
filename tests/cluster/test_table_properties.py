"""The replicated table's merge is order-independent: any interleaving or duplication
of the same writes and deletes ends in the same table (networkdb's property)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pyoverlay.cluster.table import Table

WRITES = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # owner
        st.sampled_from(["k1", "k2", "k3"]),  # key
        st.one_of(st.none(), st.integers(0, 5)),  # value (None: delete)
        st.integers(1, 50),  # when (ms)
    ),
    min_size=1,
    max_size=25,
)


def updates(writes):
    """Each owner writes with its own table (its own clock), as nodes do."""
    owners = {o: Table(o, 1800.0) for o in "abc"}
    out = []
    for owner, key, value, when in writes:
        row = owners[owner].write(
            when / 1000, "peer/1", key, None if value is None else {"v": value}
        )
        out.append(row.wire(when / 1000))
    return out


def state(t: Table):
    return {k: (r.owner, r.ltime, r.value) for k, r in t.rows.items()}


@settings(max_examples=150)
@given(WRITES, st.randoms(use_true_random=False), st.integers(0, 3))
def test_any_order_and_duplication_gives_the_same_table(
    writes, rnd: random.Random, dups: int
) -> None:
    ups = updates(writes)
    reference = Table("x", 1800.0)
    for u in ups:
        reference.merge(0.0, u)
    shuffled = ups + [rnd.choice(ups) for _ in range(dups * len(ups))]
    rnd.shuffle(shuffled)
    other = Table("y", 1800.0)
    for u in shuffled:
        other.merge(0.0, u)
    assert state(other) == state(reference)
    # and the visible rows (what the driver programs) agree too
    assert {(r.key, str(r.value)) for r in other.visible()} == {
        (r.key, str(r.value)) for r in reference.visible()
    }


def test_a_delete_beats_the_write_it_follows_whatever_the_order() -> None:
    owner = Table("a", 1800.0)
    put = owner.write(1.0, "peer/1", "k", {"v": 1}).wire(1.0)
    delete = owner.write(2.0, "peer/1", "k", None).wire(2.0)
    for order in ([put, delete], [delete, put]):
        t = Table("z", 1800.0)
        for u in order:
            t.merge(2.0, u)
        assert t.rows[("peer/1", "k")].value is None and not t.visible()


def test_tombstones_are_reaped_after_their_residual_time() -> None:
    owner = Table("a", 60.0)
    owner.write(0.0, "peer/1", "k", {"v": 1})
    dead = owner.write(10.0, "peer/1", "k", None).wire(40.0)  # sent 30 s after the delete
    t = Table("z", 60.0)
    t.merge(100.0, dead)
    t.reap(129.0)
    assert ("peer/1", "k") in t.rows
    t.reap(130.5)
    assert ("peer/1", "k") not in t.rows


def test_a_scope_is_matched_exactly_not_as_a_prefix() -> None:
    """VNI 4097's endpoints are not VNI 40971's: reading `peer/4097` once returned both
    (a prefix match), which would have programmed one network's peers on another's VTEP."""
    t = Table("a", 1800.0)
    t.write(1.0, "peer/4097", "x", {"ip": "10.0.0.2"})
    t.write(1.0, "peer/40971", "y", {"ip": "10.9.0.2"})
    assert [r.key for r in t.visible("peer/4097")] == ["x"]
    assert sorted(r.key for r in t.visible()) == ["x", "y"]
    t.write(2.0, "peer/4097", "x", None)
    t.reap(2.0 + 1800.0)
    assert t.visible("peer/4097") == [] and "peer/4097" not in t.scopes
