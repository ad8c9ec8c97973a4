"""ADAPTER: libnftables (Debian's python3-nftables), the only module that imports it.

nftables is per network namespace, and libnftables talks to the namespace
of the thread that opens its netlink socket.  So every call runs on one
dedicated thread (netns.py): it enters the target namespace (the file Docker
gave as SandboxKey), makes a fresh libnftables context there, runs one JSON
batch (one kernel transaction: all of it or nothing), and comes back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.kernel import conntrack
from pyoverlay.driver.kernel.netns import NetnsThread

T = TypeVar("T")


class NftError(PyoverlayError):
    """libnftables refused a batch, or a namespace could not be entered."""


def _load() -> Any:
    try:
        import nftables
    except ImportError as exc:  # pragma: no cover - scripts/install provides it
        raise NftError(
            "python3-nftables is missing (apt install python3-nftables; the venv needs "
            "--system-site-packages)"
        ) from exc
    return nftables


def available() -> None:
    """Raise NftError (with the fix) if libnftables cannot be loaded."""
    _load().Nftables()


class Nft:
    def __init__(self) -> None:
        self._thread = NetnsThread("nft", NftError)

    async def _call(self, netns: Path | None, work: Callable[[Any], T]) -> T:
        """On the nft thread: enter `netns`, run work(fresh libnftables context), come back."""
        return await self._thread.call(netns, lambda: work(_load().Nftables()))

    async def _json(self, netns: Path | None, batch: dict[str, Any]) -> tuple[int, Any, str]:
        def run(ctx: Any) -> tuple[int, Any, str]:
            ctx.set_json_output(True)
            rc, out, err = ctx.json_cmd(batch)
            return int(rc), out, str(err or "")

        rc, out, err = await self._call(netns, run)
        return rc, json.loads(out) if isinstance(out, str) and out else out, err

    async def apply(self, netns: Path | None, commands: list[dict[str, Any]]) -> None:
        """Run `commands` as one transaction in the namespace at `netns` (None: ours)."""
        if not commands:
            return
        rc, _, err = await self._json(netns, {"nftables": commands})
        if rc != 0:
            raise NftError(f"nft in {netns or 'host'}: {err.strip() or f'error {rc}'}")

    async def list_table(self, netns: Path | None, family: str, name: str) -> Any | None:
        """`nft -j list table FAMILY NAME` in a namespace, or None if there is no such table."""
        cmd = {"nftables": [{"list": {"table": {"family": family, "name": name}}}]}
        rc, out, err = await self._json(netns, cmd)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError(f"nft list in {netns or 'host'}: {err.strip() or f'error {rc}'}")
        return out

    async def text(self, netns: Path | None, family: str, name: str) -> str:
        """The table as `nft list table` prints it (for people)."""

        def run(ctx: Any) -> str:
            rc, out, err = ctx.cmd(f"list table {family} {name}")
            return str(out if rc == 0 else err)

        return await self._call(netns, run)

    async def forget_flows(
        self, netns: Path | None, vip: IPv4Address, gone: Collection[IPv4Address]
    ) -> int:
        """Conntrack, not nftables (conntrack.py), but on the same namespace thread: the
        UDP flows that the VIP rules once sent to tasks now gone."""
        try:
            return await self._thread.call(netns, lambda: conntrack.forget(vip, gone))
        except OSError as exc:
            raise NftError(f"conntrack in {netns or 'host'}: {exc}") from exc

    def close(self) -> None:
        self._thread.close()
