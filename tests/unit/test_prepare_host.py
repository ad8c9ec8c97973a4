"""scripts/prepare-host: a fresh host gets the directories the managed plugin mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_fresh_host_gets_the_plugin_mount_sources_now_and_at_boot(tmp_path: Path) -> None:
    env = {**os.environ, "ROOT": str(tmp_path)}
    for _ in range(2):  # idempotent
        subprocess.run([str(ROOT / "scripts/prepare-host")], env=env, check=True)
    state = tmp_path / "var/lib/pyoverlay"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (tmp_path / "run/netns").is_dir()
    conf = (tmp_path / "etc/tmpfiles.d/pyoverlay.conf").read_text()
    assert "d /run/netns 0755 root root -" in conf
    assert "d /var/lib/pyoverlay 0700 root root -" in conf
    assert "d /run/docker/netns 0755 root root -" in conf
    # the directories config.json mounts are exactly these (dockerd makes its own socket)
    mounts = json.loads((ROOT / "config.json").read_text())["mounts"]
    dirs = {m["source"] for m in mounts} - {"/var/run/docker.sock"}
    assert dirs == {"/var/lib/pyoverlay", "/run/netns", "/run/docker/netns"}
    assert all((tmp_path / d.lstrip("/")).is_dir() for d in dirs)
