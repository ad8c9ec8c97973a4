"""Installed the way Docker users install plugins: pushed to a registry, `docker plugin
install` on every host with the settings on the install line, upgraded and downgraded in
place under a 20 ms cross-host ping.

The registry is Debian's docker-registry (lab/registry.py) on the lab's underlay, over
TLS; each host trusts its CA through /etc/docker/certs.d/<registry>/ca.crt.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Pinger, Scratch, api, both, ip_of, ping

from lab.hosts import IMAGE, PLUGIN, ROOT, Host, Lab, wait_for
from lab.registry import LabRegistry, registry

pytestmark = pytest.mark.integration
HOSTS = 2
LEGACY_PLUGIN = False
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)


@pytest.fixture(scope="module")
def reg(lab: Lab) -> Iterator[LabRegistry]:
    with registry(lab) as r:
        try:
            yield r
        finally:
            for h in lab.hosts:
                h.remove_plugin()


def build_plugin(h: Host, *args: str) -> list[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{h.docker_sock}"}
    r = subprocess.run(
        [str(ROOT / "scripts/build-plugin"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()


def push_next(h: Host, reg: LabRegistry) -> str:
    """A newer release to upgrade to: the same tree but its release file and manifest
    saying `next` (another layer, another digest), pushed as REGISTRY/pyoverlay:next."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        tar = Path(tmp) / "plugin.tar"
        build_plugin(h, "--tar", str(tar))
        (Path(tmp) / "dir").mkdir()
        subprocess.run(["tar", "-xf", str(tar), "-C", str(Path(tmp) / "dir")], check=True)
        tar.unlink()
        (Path(tmp) / "dir" / "rootfs" / "etc" / "pyoverlay-release").write_text("next\n")
        config = Path(tmp) / "dir" / "config.json"
        manifest = json.loads(config.read_text())
        manifest["description"] += " (next)"
        config.write_text(json.dumps(manifest, indent=2))
        ref = f"{reg.address}/pyoverlay:next"
        reg.publish(h, Path(tmp) / "dir", ref)
    return ref


def inspect(h: Host, fmt: str) -> str:
    return h.docker("plugin", "inspect", "-f", fmt, PLUGIN).stdout.strip()


def upgrade(h: Host, ref: str) -> None:
    """The README's upgrade: disable -f, upgrade, the mount sources set again (an upgrade
    puts the new manifest's defaults back; a host with the defaults skips it), enable."""
    h.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
    h.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", PLUGIN,
             ref, timeout=600)  # fmt: skip
    mounts = inspect(h, "{{range .Config.Mounts}}{{.Name}}.source={{.Source}} {{end}}")
    print(f"{h.name} after upgrade, before set: {mounts}")
    h.docker("plugin", "set", PLUGIN, *h.plugin_mounts())
    h.docker("plugin", "enable", PLUGIN, timeout=120)


def test_install_from_a_registry_then_upgrade_and_downgrade_in_place_lose_no_packet(
    lab: Lab, reg: LabRegistry, scratch: Scratch
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    t0 = time.monotonic()
    pushed = build_plugin(h1, "--push", reg.address)
    assert pushed == [f"{reg.address}/pyoverlay:{VERSION}", f"{reg.address}/pyoverlay:latest"]
    print(f"built and pushed in {time.monotonic() - t0:.1f} s; registry holds "
          f"{reg.stored_bytes() / 1e6:.1f} MB")  # fmt: skip
    release = pushed[0]
    for h in lab.hosts:
        t0 = time.monotonic()
        others = ",".join(o.address for o in lab.hosts if o is not h)
        h.install_plugin(f"PYOVERLAY_JOIN={others}", remote=release)
        print(f"{h.name}: docker plugin install {release} in {time.monotonic() - t0:.1f} s")
        assert inspect(h, "{{.PluginReference}} {{.Enabled}}") == f"{release} true"
        # the settings given on the install line are the plugin's
        env = inspect(h, "{{json .Settings.Env}}")
        assert f"PYOVERLAY_JOIN={others}" in env, env
    nss = both(scratch, lab, "up1", "100.0.61.0/24")
    scratch.run(h1, "ua", "--network", "up1", IMAGE, "sleep", "3600")
    scratch.run(h2, "ub", "--network", "up1", IMAGE, "sleep", "3600")
    target = ip_of(h1, "ua", "up1")
    wait_for("h2 -> h1 over the installed plugin", lambda: ping(h2, "ub", target), timeout=15)
    ids = {h.name: h.docker("ps", "-q", "--no-trunc").stdout.split() for h in lab.hosts}
    newer = push_next(h1, reg)
    for n, ref in enumerate((newer, release)):  # up, then back down
        pinger = Pinger(h2, "ub", target)
        try:
            for h in (h2, h1):  # the sender's side first, then the receiver's
                upgrade(h, ref)
                assert inspect(h, "{{.PluginReference}} {{.Enabled}}") == f"{ref} true"
                wait_for(f"{h.name}'s plugin answering", lambda h=h: bool(api(h, "/status")))
            out, sent, got = pinger.stop()
        finally:
            pinger.kill()
        print(f"upgrade of both hosts to {ref}: {got} of {sent} pings answered")
        assert got == sent and sent > 50, out
        for h in lab.hosts:  # containers untouched, state and settings kept
            assert h.docker("ps", "-q", "--no-trunc").stdout.split() == ids[h.name]
            assert inspect(h, "{{.Config.Description}}").endswith("(next)") == (ref == newer)
            assert nss[h.name] in h.overlay_namespaces()
            env = inspect(h, "{{json .Settings.Env}}")
            assert "PYOVERLAY_JOIN=" in env and "PYOVERLAY_GOSSIP_KEY_FILE=gossip.key" in env
        # the upgraded plugins are a cluster again (not only the kept kernel state): each
        # sees the other alive, and a container started now is reached across hosts
        for h, other in ((h1, h2), (h2, h1)):
            wait_for(
                f"{other.name} alive on {h.name}",
                lambda h=h, o=other: any(  # type: ignore[misc]
                    m["vtep"] == o.address and m["status"] == "alive" for m in api(h, "/members")
                ),
                timeout=30,
            )
        late = f"late{n}"
        scratch.run(h2, late, "--network", "up1", IMAGE, "sleep", "3600")
        ids["h2"] = h2.docker("ps", "-q", "--no-trunc").stdout.split()
        wait_for(
            f"h1 -> {late} on h2",
            lambda late=late: ping(h1, "ua", ip_of(h2, late, "up1")),  # type: ignore[misc]
            timeout=15,
        )
