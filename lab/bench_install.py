"""Bench `plugin-install`: what a user downloads and waits for when installing pyoverlay
from a registry, side by side with another build of the plugin (`--plugin-before TAR`,
a `scripts/build-plugin --tar` of an older checkout) in the same run, alternating.

A lab host pushes each tree to a lab registry (lab/registry.py, TLS); another host
installs it from there (`docker plugin install`, enabled), then removes it; --runs
rounds. Reported: rootfs size, bytes the registry stores (the compressed layer and the
config), install time (median and spread).
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.hosts import ROOT, Lab
from lab.registry import registry


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def run(report: Callable[..., None], runs: int, before: str = "") -> None:
    lab = Lab("bpi" + secrets.token_hex(1), hosts=2)
    with (
        lab.running(plugin=False),
        registry(lab) as reg,
        tempfile.TemporaryDirectory(dir="/var/tmp") as tmp,
    ):
        h1, h2 = lab.host(1), lab.host(2)
        trees = {"now": Path(tmp) / "now.tar"}
        env = {**os.environ, "DOCKER_HOST": f"unix://{h1.docker_sock}"}
        subprocess.run(
            [str(ROOT / "scripts/build-plugin"), "--tar", str(trees["now"])],
            env=env, check=True, capture_output=True, timeout=1200,
        )  # fmt: skip
        if before:
            trees["before"] = Path(before)
        sizes: dict[str, tuple[int, int]] = {}
        refs: dict[str, str] = {}
        for name, tar in trees.items():
            d = Path(tmp) / name
            d.mkdir()
            subprocess.run(["tar", "-xf", str(tar), "-C", str(d)], check=True)
            ref = f"{reg.address}/pyoverlay:{name}"
            stored = reg.stored_bytes()
            reg.publish(h1, d, ref)
            sizes[name] = (_tree_bytes(d / "rootfs"), reg.stored_bytes() - stored)
            refs[name] = ref
            subprocess.run(["rm", "-rf", str(d)], check=True)
        took: dict[str, list[float]] = {n: [] for n in refs}
        for r in range(runs):
            order = list(refs) if r % 2 == 0 else list(refs)[::-1]
            for name in order:
                t0 = time.monotonic()
                h2.install_plugin(remote=refs[name])
                took[name].append(time.monotonic() - t0)
                h2.remove_plugin()
        for name in refs:
            report(
                f"plugin-install-{name}",
                rootfs_mb=round(sizes[name][0] / 1e6, 1),
                pushed_mb=round(sizes[name][1] / 1e6, 1),
                install_s=round(statistics.median(took[name]), 1),
                install_runs_s=[round(x, 1) for x in took[name]],
            )
        if "before" in refs:
            report(
                "plugin-install-vs-before",
                pushed=round(sizes["now"][1] / sizes["before"][1], 2),
                install=round(
                    statistics.median(took["now"]) / statistics.median(took["before"]), 2
                ),
            )
