"""Service VIP rules in every local container namespace, kept in line with the table
(ruleset.py decides, the RuleTables adapter acts); the overlay driver calls it on Join,
Leave, a service binding and every reconcile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.core.directory import KeptRows
from pyoverlay.driver.core.interfaces import RuleTables
from pyoverlay.driver.core.model import EndpointSpec
from pyoverlay.driver.overlay import peers
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.servicelb import ruleset as vips

log = structlog.get_logger("pyoverlay.services")
# Where Docker keeps container namespaces; a managed plugin sees them through the
# `sandboxes` mount of config.json (a SandboxKey path is looked up there by name).
DEFAULT_SANDBOX_DIR = Path("/var/run/docker/netns")


class VipProgrammer:
    def __init__(
        self, driver: OverlayDriver, tables: RuleTables, sandbox_dir: Path = DEFAULT_SANDBOX_DIR
    ) -> None:
        self.driver = driver
        self.tables = tables
        self.sandbox_dir = sandbox_dir
        self._sandbox_locks: dict[str, asyncio.Lock] = {}
        self.vip_errors: dict[str, str] = {}  # sandbox -> why its rules are not as wanted
        self._programmed: dict[str, vips.Programmed | None] = {}  # sandbox -> last applied
        self.kept = KeptRows("vtep")

    def sandbox_path(self, key: str) -> Path:
        """Docker's SandboxKey as this process sees it (a managed plugin: by name, under
        its `sandboxes` mount)."""
        path = Path(key)
        return path if path.exists() else self.sandbox_dir / path.name

    def vips_of(self, vni: int) -> vips.Vips:
        """The network's VIPs from its rows, and from the last rows of hosts whose plugin
        is silent while the host answers (their tasks still serve: as their FDB/ARP
        entries, they stay in every VIP until the host itself is gone)."""
        rows = self.kept.rows(self.driver.directory, peers.scope(vni))
        return vips.services(vips.backends_of([(k, v, ver) for k, (v, ver) in rows.items()]))

    def sandboxes(self, vni: int | None = None) -> dict[str, list[EndpointSpec]]:
        """Joined container namespaces -> their pyoverlay endpoints (on networks with `vni`)."""
        out: dict[str, list[EndpointSpec]] = {}
        for ep in self.driver.endpoints.values():
            net = self.driver.networks.get(ep.network_id)
            if ep.joined and ep.sandbox and net is not None and vni in (None, net.vni):
                out.setdefault(ep.sandbox, []).append(ep)
        return out

    def wanted_vips(self, sandbox: str, memo: dict[int, vips.Vips] | None = None) -> vips.Vips:
        """The VIPs of every network this container is on (`memo`: per-VNI answers already
        worked out, shared by a sweep over many containers)."""
        memo = {} if memo is None else memo
        vnis = {self.driver.networks[e.network_id].vni for e in self.sandboxes().get(sandbox, [])}
        for vni in vnis - set(memo):
            memo[vni] = self.vips_of(vni)
        return vips.merge(memo[v] for v in sorted(vnis))

    async def programmed_vips(self, sandbox: str) -> vips.Programmed | None:
        path = self.sandbox_path(sandbox)
        return vips.parse(await self.tables.list_table(path, vips.FAMILY, vips.TABLE))

    async def sync_sandbox(
        self, sandbox: str, verify: bool = False, memo: dict[int, vips.Vips] | None = None
    ) -> int:
        """Make one container namespace's VIP rules match the table; the number of nft
        commands run (one transaction).  A namespace that is gone needs nothing.

        What was last programmed is remembered, so a change costs one small
        transaction and no read-back of the whole table (reading it grows with the
        number of services: 26 ms at 100, 300 ms at 1,000).  verify=True (the
        periodic reconciler) reads the kernel instead and so repairs drift; a
        transaction that fails on the remembered state is retried on a fresh read.
        """
        if not sandbox:
            return 0
        lock = self._sandbox_locks.setdefault(sandbox, asyncio.Lock())
        async with lock:
            path = self.sandbox_path(sandbox)
            if not path.exists():
                self._forget_sandbox(sandbox)
                return 0
            if (
                sandbox in self._programmed
                and self._programmed[sandbox] is None
                and not self.wanted_vips(sandbox, memo)
            ):
                # nothing programmed and nothing wanted: no read-back (one libnftables
                # context per container every reconcile is what a busy host cannot afford)
                return 0
            try:
                cmds = await self._program(sandbox, path, verify, memo)
            except PyoverlayError as first:
                if verify:
                    self.vip_errors[sandbox] = str(first)
                    raise
                try:
                    cmds = await self._program(sandbox, path, True, memo)
                except PyoverlayError as exc:
                    self.vip_errors[sandbox] = str(exc)
                    raise
            self.vip_errors.pop(sandbox, None)
            if sandbox not in self.sandboxes():  # left: nothing more to remember
                self._forget_sandbox(sandbox)
            if cmds:
                log.info("vips programmed", sandbox=Path(sandbox).name, changes=cmds)
            return cmds

    async def _program(
        self, sandbox: str, path: Path, verify: bool, memo: dict[int, vips.Vips] | None
    ) -> int:
        if verify:
            self._programmed.pop(sandbox, None)
        if sandbox in self._programmed:
            have = self._programmed[sandbox]
        else:
            have = await self.programmed_vips(sandbox)
        want = self.wanted_vips(sandbox, memo)
        if not self.driver.prune_peers:  # the sync gate, as for FDB/ARP entries
            want = vips.keep(have, want)
        cmds = vips.plan(have, want)
        self._programmed.pop(sandbox, None)  # unknown until the transaction is through
        await self.tables.apply(path, cmds)
        live = {v: s for v, s in want.items() if s.backends}
        self._programmed[sandbox] = vips.Programmed(True, live) if live else None
        for vip, gone in sorted(vips.removed(have, want).items()):
            try:
                n = await self.tables.forget_flows(path, vip, gone)
            except PyoverlayError as exc:  # the rules are right; stale flows time out
                log.error("conntrack flows not forgotten", vip=str(vip), error=str(exc))
                continue
            if n:
                log.info("udp flows to removed tasks forgotten", vip=str(vip), flows=n)
        return len(cmds)

    def _forget_sandbox(self, sandbox: str) -> None:
        self.vip_errors.pop(sandbox, None)
        self._programmed.pop(sandbox, None)
        if sandbox not in self.sandboxes():
            self._sandbox_locks.pop(sandbox, None)

    async def sync_sandbox_quietly(self, sandbox: str) -> None:
        try:
            await self.sync_sandbox(sandbox)
        except PyoverlayError as exc:
            log.error("vip rules failed", sandbox=Path(sandbox).name, error=str(exc))

    async def sync_vips(self, vni: int | None = None, verify: bool = False) -> int:
        """Make the VIP rules of every local container on networks with `vni` (or all)
        match the table (verify: read them back from the kernel first); returns the
        number of nft commands run."""
        changed = 0
        memo: dict[int, vips.Vips] = {}  # each network's VIPs worked out once per sweep
        for sandbox in sorted(self.sandboxes(vni)):
            try:
                changed += await self.sync_sandbox(sandbox, verify, memo)
            except PyoverlayError as exc:
                log.error("vip rules failed", sandbox=Path(sandbox).name, error=str(exc))
        return changed
