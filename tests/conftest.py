"""Shared fixtures: services wired to the in-memory kernel, and a unique name prefix."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Services

from pyoverlay.driver.kernel.nft import Nft


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hosts",
        choices=("lab", "vagrant"),
        default="lab",
        help="integration tests' hosts: lab (namespace hosts on this machine) or vagrant "
        "(the Vagrantfile's VMs, already up: scripts/test-vm); with vagrant only tests "
        "marked vm run",
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A failure's report written at once to $PYOVERLAY_FAILURES (scripts/test sets it for
    the tiers that run beside the others: one stopped early still shows why it failed)."""
    path = os.environ.get("PYOVERLAY_FAILURES")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"\n==== {report.nodeid} ({report.when}) ====\n{report.longreprtext[-6000:]}\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hosts") != "vagrant":
        return
    keep = [i for i in items if i.get_closest_marker("vm")]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture
def nft() -> Iterator[Nft]:
    """libnftables for a kernel test (its tables are in the test's own namespaces)."""
    adapter = Nft()
    yield adapter
    adapter.close()


@pytest.fixture
def prefix() -> str:
    """A unique prefix for every kernel object, namespace and file a test makes."""
    return "t" + secrets.token_hex(2)


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return Services(tmp_path)
