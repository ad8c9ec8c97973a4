"""How the CLI words one kernel peer entry (shared by `peers` and `diagram`)."""

from __future__ import annotations


def describe_entry(e: dict[str, str]) -> str:
    """One FDB or neighbour entry as `bridge fdb` / `ip neigh` would word it."""
    if e["kind"] == "fdb":
        return f"fdb {e['mac']} dst {e['dst']}"
    return f"neigh {e['ip']} lladdr {e['mac']}"
