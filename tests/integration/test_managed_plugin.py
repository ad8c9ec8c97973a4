"""pyoverlay as a Docker managed plugin (`docker plugin create/set/enable`) on two real hosts.

scripts/build-plugin builds the plugin offline (debootstrap rootfs + local
wheels) for each host's daemon; the hosts join by gossip through plugin
settings; containers talk across the overlay; `docker plugin disable -f` /
`enable` and a dockerd restart with --live-restore keep running containers'
traffic and the plugin's state.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from support import Scratch, install, ip_of, ping

from lab.hosts import DOCKER, IMAGE, PLUGIN, Host, Lab, wait_for
from lab.registry import Release

pytestmark = pytest.mark.integration
HOSTS = 2
LEGACY_PLUGIN = False
DOCKERD_ARGS = ("--live-restore",)


@pytest.fixture(scope="module")
def plugins(lab: Lab, release: Release):
    for h in lab.hosts:
        others = ",".join(o.address for o in lab.hosts if o is not h)
        install(h, lab, release, f"PYOVERLAY_JOIN={others}")
    yield
    for h in lab.hosts:
        h.remove_plugin()


def network(scratch: Scratch, h: Host, name: str, subnet: str) -> None:
    h.docker("network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--subnet", subnet, name)
    scratch.made.append((h, "network", name))


def test_managed_plugin_across_two_hosts_survives_disable_enable_and_live_restore(
    lab: Lab, plugins: None, scratch: Scratch
) -> None:
    h1, h2 = lab.hosts
    for h in lab.hosts:
        network(scratch, h, "mnet", "100.2.0.0/24")
    scratch.run(h1, "m1", "--network", "mnet", IMAGE, "sleep", "3600")
    scratch.run(h2, "m2", "--network", "mnet", IMAGE, "sleep", "3600")
    m1, m2 = ip_of(h1, "m1", "mnet"), ip_of(h2, "m2", "mnet")
    assert m1 != m2
    wait_for("m2 -> m1 through the managed plugins", lambda: ping(h2, "m2", m1), timeout=30)
    # the plugin's namespace is visible to `ip netns` on the host
    assert h1.overlay_namespaces()

    # disable -f / enable on h2 while m2 runs: traffic goes on, state comes back
    pinger = subprocess.Popen(
        [
            DOCKER,
            "-H",
            f"unix://{h2.docker_sock}",
            "exec",
            "m2",
            "ping",
            "-c",
            "20",
            "-i",
            "0.1",
            "-W",
            "1",
            m1,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    h2.docker("plugin", "disable", "-f", PLUGIN, timeout=60)
    h2.docker("plugin", "enable", PLUGIN, timeout=60)
    out, _ = pinger.communicate(timeout=30)
    assert "20 packets transmitted, 20 packets received" in out, out  # not rounded
    state = json.loads((h2.state_dir / "driver.json").read_text())
    assert len(state["networks"]) == 1 and len(state["endpoints"]) == 1
    scratch.run(h2, "m3", "--network", "mnet", IMAGE, "sleep", "3600")
    wait_for("m3 -> m1 after enable", lambda: ping(h2, "m3", m1), timeout=30)

    # dockerd restart with --live-restore on h1: m1 keeps running and answering
    h1.stop_dockerd()
    time.sleep(1)
    assert ping(h2, "m2", m1)
    h1.start_dockerd("--live-restore")
    wait_for("m2 -> m1 after the live-restore restart", lambda: ping(h2, "m2", m1), timeout=30)
    scratch.run(h1, "m4", "--network", "mnet", IMAGE, "sleep", "3600")
    wait_for("m2 -> m4", lambda: ping(h2, "m2", ip_of(h1, "m4", "mnet")), timeout=30)
