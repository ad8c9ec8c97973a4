"""The harness's wait_for: how often it polls, here and under emulation, and its last check."""

from __future__ import annotations

import time

import pytest

from lab import hosts
from lab.hosts import wait_for


def polls(slow: float, monkeypatch: pytest.MonkeyPatch, cost: float = 0.0) -> int:
    """How many checks a 1 s wait that never succeeds makes."""
    monkeypatch.setattr(hosts, "SLOW", slow)
    calls = 0

    def never() -> bool:
        nonlocal calls
        calls += 1
        time.sleep(cost)
        return False

    with pytest.raises(TimeoutError, match="waiting for nothing"):
        wait_for("nothing", never, timeout=1.0)
    return calls


def test_polls_every_50ms_here_and_further_apart_under_emulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert polls(1, monkeypatch) >= 8  # 20 at 50 ms (a busy machine sleeps longer)
    assert 2 <= polls(8, monkeypatch) <= 4  # 0.4 s apart, and one at the deadline
    # a check that costs 0.3 s: 0.4 s apart still, never back to back
    assert polls(8, monkeypatch, cost=0.3) <= 3


def test_a_last_check_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts, "SLOW", 8)  # polls 0.4 s apart: 0, 0.4, 0.8, then 1.0
    start = time.monotonic()
    wait_for("the deadline", lambda: time.monotonic() - start >= 0.9, timeout=1.0)
