"""Benchmark `ipsec-keeper`: the IPsec keeper's cost at 100 encrypted peers (no ESP needed).

One host's keeper (driver/secure/keeper.py) against a simulated xfrm table
(testing/ipsec_sim.py) holding 100 peers' `ipsec` rows, two ring keys (a key
rotation in progress: the worst steady case). Measured in one run:
  * the SAs it installs, beside the bound peers x ring keys x (lookahead + 2) + peers;
  * the first sync (everything to install), a steady sync (read, plan, nothing to
    change: what a wake-up or the 30 s drift check costs) and a rotation sync;
  * the cost of one kernel read on this machine (`ip xfrm state list` and `ip xfrm
    policy list`, the two forks of a read), and so the idle cost per minute: a read
    every READ_EVERY s now, against a read at every 1 s tick before (issue 25 item 9).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import structlog

from pyoverlay.driver.secure import keeper as keeper_mod
from pyoverlay.driver.secure import sa as ipsec
from pyoverlay.driver.secure.keeper import Encryption, Inputs
from pyoverlay.driver.secure.sa import Published
from testing.ipsec_sim import NoTables, SharedRows, SimXfrm, SimXfrmAdapter

LOCAL = IPv4Address("10.80.0.1")
PEERS = 100
RING = [b"k" * 32, b"j" * 32]
OLD_TICK = 1.0  # seconds: the keeper read the kernel at every tick before


def keeper_with_peers(tmp: Path, peers: int) -> tuple[Encryption, SimXfrm, SharedRows]:
    sim, rows = SimXfrm(), SharedRows()
    enc = Encryption(SimXfrmAdapter(sim), NoTables(), tmp / "ipsec.json", LOCAL, 4789, "me")
    vteps = [LOCAL + 1 + i for i in range(peers)]
    enc.inputs = Inputs(
        ring=lambda: RING,
        members=lambda: [LOCAL, *vteps],
        encrypted_vnis=lambda: [100],
        any_network=lambda: True,
    )
    enc.directory = rows  # type: ignore[assignment]
    enc.prune = True
    keys = tuple(ipsec.key_id(k) for k in RING)
    for i, vtep in enumerate(vteps):
        row = Published(vtep, f"{i:016x}", {str(LOCAL): 3}, keys, {str(LOCAL): 0})
        rows.publish(ipsec.ROW_SCOPE, f"n{i}", row.to_json())
    return enc, sim, rows


def fork_seconds(runs: int) -> float:
    """One kernel read as the xfrm adapter does it: two `ip` runs."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for what in ("state", "policy"):
            subprocess.run(["ip", "xfrm", what, "list"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(report: Callable[..., None], runs: int = 20) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> dict[str, object]:
        with tempfile.TemporaryDirectory(prefix="pyo-keeper-") as tmp:
            enc, sim, _ = keeper_with_peers(Path(tmp), PEERS)
            await enc.start()
            t0 = time.perf_counter()
            errors = await enc.sync(1000.0)
            first = time.perf_counter() - t0
            assert not errors, errors
            steady = []
            for i in range(runs):
                t0 = time.perf_counter()
                await enc.sync(1001.0 + i)
                steady.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await enc.sync(1000.0 + enc.rotation + 1)  # every outbound SA due for rotation
            rotation = time.perf_counter() - t0
            installed = len(sim.states)
            bound = PEERS * min(len(RING), ipsec.MAX_RING_KEYS) * (ipsec.LOOKAHEAD + 2) + PEERS
            return {
                "installed": installed,
                "bound": bound,
                "first": first,
                "steady": steady,
                "rotation": rotation,
            }

    r = asyncio.run(main())
    steady = r["steady"]
    assert isinstance(steady, list)
    read = fork_seconds(runs)
    sync = statistics.median(steady)
    per_min_now = 60 / keeper_mod.READ_EVERY * (read + sync)
    per_min_old = 60 / OLD_TICK * (read + sync)
    report(
        "ipsec-keeper",
        peers=PEERS,
        ring_keys=len(RING),
        sas_installed=r["installed"],
        sas_bound=r["bound"],
        first_sync_ms=round(float(r["first"]) * 1000, 1),  # type: ignore[arg-type]
        steady_sync_ms=round(sync * 1000, 2),
        steady_spread_ms=f"{min(steady) * 1000:.2f}-{max(steady) * 1000:.2f}",
        rotation_sync_ms=round(float(r["rotation"]) * 1000, 1),  # type: ignore[arg-type]
        kernel_read_ms=round(read * 1000, 1),
        idle_cpu_ms_per_min=round(per_min_now * 1000, 1),
        before_ms_per_min=round(per_min_old * 1000, 1),
        ratio=round(per_min_now / per_min_old, 3),
    )
