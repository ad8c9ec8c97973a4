"""Shared fixtures: services wired to the in-memory kernel, and a unique name prefix."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from support import Services


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hosts",
        choices=("lab", "vagrant"),
        default="lab",
        help="integration tests' hosts: lab (namespace hosts on this machine) or vagrant "
        "(the Vagrantfile's VMs, already up: scripts/test-vm); with vagrant only tests "
        "marked vm run",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hosts") != "vagrant":
        return
    keep = [i for i in items if i.get_closest_marker("vm")]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture
def prefix() -> str:
    """A unique prefix for every kernel object, namespace and file a test makes."""
    return "t" + secrets.token_hex(2)


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return Services(tmp_path)
