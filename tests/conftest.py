"""Shared fixtures: services wired to the in-memory kernel, and a unique name prefix."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from support import Services


@pytest.fixture
def prefix() -> str:
    """A unique prefix for every kernel object, namespace and file a test makes."""
    return "t" + secrets.token_hex(2)


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return Services(tmp_path)
