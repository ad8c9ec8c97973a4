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


@pytest.fixture(scope="module")
def pushed(lab: Lab, reg: LabRegistry) -> list[str]:
    """This checkout's plugin pushed to the lab registry (scripts/build-plugin --push):
    the references it printed."""
    t0 = time.monotonic()
    refs = build_plugin(lab.host(1), "--push", reg.address)
    print(f"built and pushed in {time.monotonic() - t0:.1f} s; registry holds "
          f"{reg.stored_bytes() / 1e6:.1f} MB")  # fmt: skip
    return refs


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
    lab: Lab, reg: LabRegistry, pushed: list[str], scratch: Scratch
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    assert pushed == [f"{reg.address}/pyoverlay:{VERSION}", f"{reg.address}/pyoverlay:latest"]
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


def test_bad_install_input_gets_a_clear_message(
    lab: Lab, reg: LabRegistry, pushed: list[str]
) -> None:
    """What a user gets wrong on the install line, and what each leaves (docs/design.md
    "Distribution"): a registry that is down (nothing installed); a setting name the
    plugin does not have and a mount source that does not exist (Docker's own checks:
    the plugin stays installed, disabled, until `docker plugin rm`: docker CLI 20.10
    never removes it, see README); a wrong value (pyoverlay's check: the plugin answers
    every call with the setting to fix, and nothing is made on the host until it is)."""
    h1 = lab.host(1)
    h1.remove_plugin()
    release = pushed[0]

    def install(ref: str, *settings: str) -> subprocess.CompletedProcess[str]:
        every = ["PYOVERLAY_GOSSIP_KEY_FILE=gossip.key", *h1.plugin_mounts(), *settings]
        return h1.docker("plugin", "install", "--grant-all-permissions", "--alias", PLUGIN,
                         ref, *every, check=False, timeout=600)  # fmt: skip

    def left() -> str:
        return h1.docker("plugin", "ls", "--format", "{{.Name}} {{.Enabled}}").stdout.strip()

    down = f"{reg.address.rsplit(':', 1)[0]}:5999/pyoverlay:{VERSION}"
    r = install(down)
    assert r.returncode != 0 and "connection refused" in r.stderr, r.stderr
    assert left() == ""
    r = install(release, "PYOVERLAY_NO_SUCH=1")
    assert r.returncode != 0 and 'setting "PYOVERLAY_NO_SUCH" not found' in r.stderr, r.stderr
    assert left() == f"{PLUGIN} false"  # Docker's: installed, not enabled
    h1.docker("plugin", "rm", PLUGIN)
    r = install(release, "state.source=/nonexistent/pyoverlay")
    assert r.returncode != 0 and "no such file or directory" in r.stderr, r.stderr
    assert left() == f"{PLUGIN} false"
    h1.docker("plugin", "rm", PLUGIN)
    # a value that can never work: Docker cannot check it, pyoverlay answers every call
    # with it (a missing key file or an unassigned address exits instead: dockerd retries,
    # tests/unit/test_prebound.py)
    h1.install_plugin("PYOVERLAY_SCOPE=both", remote=release)  # enabled: it answers
    r = h1.docker("network", "create", "-d", PLUGIN, "--subnet", "100.0.62.0/24", "bad",
                  check=False)  # fmt: skip
    assert r.returncode != 0, r.stdout
    assert "pyoverlay cannot start: PYOVERLAY_SCOPE 'both' must be local" in r.stderr, r.stderr
    assert "docker plugin set PLUGIN NAME=VALUE" in r.stderr, r.stderr
    assert "bad" not in h1.docker("network", "ls").stdout
    # nothing made on the host: no VTEP, no namespace, no pool in pyoverlay's state
    assert h1.run("ip", "-d", "link", "show", "type", "vxlan").stdout.strip() == ""
    assert h1.overlay_namespaces() == []
    ipam = h1.state_dir / "ipam.json"
    assert not ipam.exists() or "100.0.62." not in ipam.read_text()
    # fixed as the message says: the same plugin works
    h1.docker("plugin", "disable", "-f", PLUGIN, timeout=120)
    h1.docker("plugin", "set", PLUGIN, "PYOVERLAY_SCOPE=local")
    h1.docker("plugin", "enable", PLUGIN, timeout=120)
    nid = h1.create_network("good", "100.0.62.0/24")
    h1.docker("network", "rm", nid)
