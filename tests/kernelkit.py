"""Helpers of the kernel tier's tests: `ip` as a user runs it, and the throwaway host's
underlay address (tests/kernel/conftest.py makes the underlay)."""

from __future__ import annotations

import json
import subprocess

UNDERLAY_IP = "192.0.2.1"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def ipj(*args: str) -> list[dict[str, object]]:
    return json.loads(ip("-j", *args) or "[]")
