"""Kernel tier: the real adapters in a throwaway network + mount namespace, which
scripts/test-kernel makes (and marks with PYOVERLAY_KERNEL_TIER=1). Outside it these
tests skip, except in CI (CI=true), where the tier must run: there it is an error."""

from __future__ import annotations

import os

import pytest
from support import require_root


@pytest.fixture(autouse=True)
def throwaway_namespace() -> None:
    require_root()
    if os.environ.get("PYOVERLAY_KERNEL_TIER") != "1":
        why = "run through scripts/test-kernel (needs a private netns and /run/netns)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the kernel tier must run in CI: {why}")
        pytest.skip(why)
