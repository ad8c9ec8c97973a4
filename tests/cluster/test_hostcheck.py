"""Silent hosts (cluster/hostcheck.py): checked from suspicion on, kept while they answer."""

from __future__ import annotations

from pyoverlay.cluster.hostcheck import HostChecks


def test_a_silent_host_is_kept_while_it_answers_and_dropped_when_it_stops() -> None:
    c = HostChecks(interval=0.5, timeout=1.0)
    assert not c.watch(0.0, {"h2": ("10.0.0.2:7966", "10.0.0.2")})
    assert c.due(0.0) == [("h2", "10.0.0.2:7966")]  # at once
    assert c.due(0.1) == []  # one check at a time
    assert c.result(0.1, "h2", True)  # answered: kept
    assert c.kept() == {"h2": "10.0.0.2"}
    assert c.due(0.4) == [] and c.due(0.5) == [("h2", "10.0.0.2:7966")]
    assert not c.result(0.6, "h2", True)
    assert c.due(1.0) == [("h2", "10.0.0.2:7966")]
    assert not c.result(2.0, "h2", False)  # timed out once: could be a busy machine
    assert c.due(2.0) == [("h2", "10.0.0.2:7966")]
    assert c.result(3.0, "h2", False)  # twice in a row: the host is gone too
    assert c.kept() == {}
    assert c.due(3.5) == [("h2", "10.0.0.2:7966")]
    assert c.result(3.6, "h2", True)  # the host is back (its plugin not yet)
    assert c.kept() == {"h2": "10.0.0.2"}
    # its plugin is back (alive in gossip): no longer watched
    assert c.watch(4.0, {})
    assert c.kept() == {} and c.next_deadline() is None


def test_a_late_result_for_a_host_no_longer_watched_changes_nothing() -> None:
    c = HostChecks()
    c.watch(0.0, {"h3": ("10.0.0.3:7966", "10.0.0.3")})
    c.due(0.0)
    c.watch(0.2, {})
    assert not c.result(0.3, "h3", True)
    assert c.kept() == {}


def test_a_host_of_the_last_life_is_presumed_up_until_two_checks_miss() -> None:
    """After our own restart, a host we knew and have not heard from yet keeps its
    containers' entries until checks say it is gone; a member suspected in this life
    is not presumed (a crashed host's entries must go within failure detection)."""
    c = HostChecks()
    silent = {"old": ("10.0.0.2:7966", "10.0.0.2"), "new": ("10.0.0.3:7966", "10.0.0.3")}
    assert c.watch(0.0, silent, presumed={"old"})
    assert c.kept() == {"old": "10.0.0.2"}
    c.due(0.0)
    assert not c.result(1.0, "old", False)  # one miss: maybe a busy machine
    c.due(1.0)
    assert c.result(2.0, "old", False) and c.kept() == {}
    assert c.result(2.0, "new", True) and c.kept() == {"new": "10.0.0.3"}


def test_one_missed_check_of_an_answering_host_keeps_its_entries() -> None:
    """On a busy machine one check of a host that answers can time out: its entries went
    and came back half a second later (likely CI's 24 lost replies of a 20 ms ping). A miss
    between answers changes nothing; a host that never answered is not kept on its
    first miss (a crash is purged as fast as before)."""
    c = HostChecks(interval=0.5, timeout=1.0)
    c.watch(0.0, {"up": ("10.0.0.2:7966", "10.0.0.2"), "gone": ("10.0.0.3:7966", "10.0.0.3")})
    c.due(0.0)
    assert c.result(0.1, "up", True) and c.kept() == {"up": "10.0.0.2"}
    assert not c.result(0.2, "gone", False) and c.kept() == {"up": "10.0.0.2"}
    for t, answered in ((0.5, True), (1.0, False), (1.5, True)):  # one miss at 1.0 s
        assert sorted(n for n, _ in c.due(t)) == ["gone", "up"]
        c.result(t + 0.1, "gone", False)
        assert not c.result(t + 0.1, "up", answered)
        assert c.kept() == {"up": "10.0.0.2"}
