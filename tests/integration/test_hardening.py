"""Two real Docker hosts: restarts lose no packet, identities cannot merge, IPAM works on
any host, keys rotate live.

The restart tests keep a 20 ms ping running from a container on h2 to one on
h1 while the plugin on one side is killed with SIGKILL and started again, at
once or only after the other host declared it dead; every reply must come
back (the restarted plugin keeps its kernel's entries until gossip has
synced; the other keeps the entries of a host whose kernel still answers).
"""

from __future__ import annotations

import base64
import os
import signal
import time

import pytest
from support import (
    KernelEvents,
    Pinger,
    Scratch,
    api,
    both,
    cli,
    ip_of,
    loss,
    lost_report,
    peers_in_order,
    ping,
    plugin_events,
    start_ping,
)

from lab.hosts import IMAGE, CommandFailed, Host, Lab, wait_for

pytestmark = pytest.mark.integration
HOSTS = 2
SLEEP = ("sleep", "3600")


# brief: restarted at once, below failure detection on an idle machine (a VM or a
# loaded machine may cross it: the test holds either way); the others: restarted only
# once the other host has declared the victim dead (and keeps its data path), and not
# before that many seconds
OUTAGES = [
    # in the VM tier the sender is h2, whose managed plugin dockerd restarts, and the
    # receiver h1, whose legacy plugin systemd restarts
    pytest.param("sender", "brief", marks=pytest.mark.vm),
    pytest.param("receiver", "brief", marks=pytest.mark.vm),
    ("sender", "6s"),
    ("receiver", "6s"),
    ("receiver", "30s"),
]


def data_path_kept(observer: Host, lab: Lab, victim: Host) -> bool:
    """`pyoverlay members` on `observer` shows the victim dead, its data path kept."""
    view = api(observer, "/members")
    return any(
        m["vtep"] == victim.address and m["status"] == "dead" and m["data_path_kept"] for m in view
    )


@pytest.mark.parametrize(("side", "outage"), OUTAGES)
def test_plugin_kill9_and_restart_loses_no_packet(
    lab: Lab, scratch: Scratch, side: str, outage: str
) -> None:
    """A 20 ms ping from a container on h2 to one on h1 while the plugin on one side is
    killed (SIGKILL), a container is started on the other host during the outage (an event
    the victim misses), and the plugin starts again: every reply comes back, the
    restarted plugin reaches the late container and its entries are all in order. A
    plugin that is down is not a host that is down: the other host keeps its entries."""
    h1, h2 = lab.host(1), lab.host(2)
    net = f"r{side[0]}{outage[0]}"
    octet = 40 + 2 * ["brief", "6s", "30s"].index(outage) + (side == "receiver")
    nss = both(scratch, lab, net, f"100.0.{octet}.0/24")
    scratch.run(h1, f"{net}a", "--network", net, IMAGE, *SLEEP)
    scratch.run(h2, f"{net}b", "--network", net, IMAGE, *SLEEP)
    target = ip_of(h1, f"{net}a", net)
    wait_for("h2 -> h1", lambda: ping(h2, f"{net}b", target), timeout=15 * lab.slow)
    victim = h2 if side == "sender" else h1
    other = h1 if victim is h2 else h2
    mine = f"{net}b" if victim is h2 else f"{net}a"
    logged = {h.name: len(h.plugin_log()) for h in (h1, h2)}
    # the overlay namespaces, and each host's own (the underlay's neighbours)
    watched = [(h, nss[h.name]) for h in (h1, h2)] + [(h, None) for h in (h1, h2)]
    with KernelEvents(watched) as events:
        out, sent, got = outage_under_ping(lab, scratch, net, target, victim, other, mine, outage)
    assert got == sent, "\n".join(
        [
            lost_report(out, sent),
            *(plugin_events(h, logged[h.name]) for h in (h1, h2)),
            events.seen,
        ]
    )


def outage_under_ping(
    lab: Lab,
    scratch: Scratch,
    net: str,
    target: str,
    victim: Host,
    other: Host,
    mine: str,
    outage: str,
) -> tuple[str, int, int]:
    """The plugin on `victim` killed and started again under a 20 ms ping from h2 to
    `target`, a container started on `other` meanwhile; the ping's (output, sent, got)."""
    pinger = Pinger(lab.host(2), f"{net}b", target)
    try:
        victim.stop_plugin(signal.SIGKILL)
        down_at = time.monotonic()
        scratch.run(other, f"{net}c", "--network", net, IMAGE, *SLEEP)
        if outage != "brief":
            wait_for(
                f"{other.name} to declare {victim.name}'s plugin dead, its data path kept",
                lambda: data_path_kept(other, lab, victim),
                timeout=30 * lab.slow,
            )
            # deliberate: the length of the outage under test
            time.sleep(max(0.0, float(outage.rstrip("s")) - (time.monotonic() - down_at)))
        victim.start_plugin()
        late = ip_of(other, f"{net}c", net)
        wait_for(
            "the restarted host reaches the late container",
            lambda: ping(victim, mine, late),
            timeout=15 * lab.slow,
        )
        wait_for(
            "peers ok after the restart (nothing stale, nothing missing)",
            lambda: peers_in_order(victim, other),
            timeout=15 * lab.slow,
        )
        return pinger.stop()
    finally:
        pinger.kill()


def test_networks_without_a_user_given_identity_are_refused_in_a_cluster(
    lab: Lab, scratch: Scratch
) -> None:
    h1 = lab.host(1)
    r = h1.docker(
        "network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "appA", check=False
    )
    assert r.returncode != 0 and "in a pyoverlay cluster a network needs --subnet" in r.stderr
    r = h1.docker("network", "create", "-d", "pyoverlay", "appB", check=False)
    assert r.returncode != 0 and "give -o vni=N" in r.stderr, r.stderr
    # a VNI another host uses for a different subnet is refused, naming the host
    scratch.network(h1, "vA", "--subnet", "100.0.50.0/24", "-o", "vni=5050")
    h2 = lab.host(2)
    out = ""

    def refused() -> bool:
        nonlocal out
        try:
            h2.create_network("vB", "100.0.51.0/24", "-o", "vni=5050")
        except CommandFailed as exc:
            out = str(exc)
            return True
        h2.docker("network", "rm", "vB")
        return False

    wait_for("the VNI clash refused on h2", refused, timeout=10)
    assert "VNI 5050 is already a different network on pyoverlay host" in out, out
    assert "subnet 100.0.51.0/24 here, 100.0.50.0/24 there" in out, out
    assert h1.docker("network", "ls", "-q", "-f", "name=appA").stdout.strip() == ""


def test_aux_address_and_any_ip_work_on_every_host(lab: Lab, scratch: Scratch) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    for h in (h1, h2):
        scratch.network(
            h,
            "nA",
            "--subnet",
            "100.1.0.0/24",
            "--ip-range",
            "100.1.0.128/25",
            "--aux-address",
            "skip=100.1.0.130",
        )
    scratch.run(h1, "i1", "--network", "nA", IMAGE, *SLEEP)
    first = ip_of(h1, "i1", "nA")  # h1 now owns the block holding it
    neighbour = ".".join(first.split(".")[:3] + [str(int(first.split(".")[3]) + 1)])
    # --ip on h2 of an address in h1's block: lent by h1, works
    scratch.run(h2, "i2", "--network", "nA", "--ip", neighbour, IMAGE, *SLEEP)
    assert ip_of(h2, "i2", "nA") == neighbour
    wait_for("i2 -> i1", lambda: ping(h2, "i2", first), timeout=15)
    # h1's own next container does not get it; an address in use is refused by name
    scratch.run(h1, "i3", "--network", "nA", IMAGE, *SLEEP)
    assert ip_of(h1, "i3", "nA") not in (first, neighbour, "100.1.0.130")
    r = h2.docker(
        "run", "-d", "--name", "i4", "--network", "nA", "--ip", first, IMAGE, *SLEEP, check=False
    )
    h2.docker("rm", "-f", "i4", check=False)
    assert r.returncode != 0 and f"{first} is in use there" in r.stderr, r.stderr
    # the aux address is never handed out on either host
    for i in range(5):
        scratch.run(h2, f"i5{i}", "--network", "nA", IMAGE, *SLEEP)
        assert ip_of(h2, f"i5{i}", "nA") != "100.1.0.130"


def test_live_key_rotation_on_two_hosts_with_traffic_flowing(lab: Lab, scratch: Scratch) -> None:
    """Add the new key everywhere, make it first everywhere, remove the old one; reload
    with `pyoverlay keys reload` each time; a 20 ms ping keeps flowing, members stay alive,
    and a container started after the rotation is reachable (the gossip works)."""
    h1, h2 = lab.host(1), lab.host(2)
    both(scratch, lab, "kr", "100.0.60.0/24")
    scratch.run(h1, "k1", "--network", "kr", IMAGE, *SLEEP)
    scratch.run(h2, "k2", "--network", "kr", IMAGE, *SLEEP)
    k1 = ip_of(h1, "k1", "kr")
    wait_for("k2 -> k1", lambda: ping(h2, "k2", k1), timeout=15)
    pinger = start_ping(h2, "k2", k1, 200)
    old, new = lab.gossip_key, base64.b64encode(os.urandom(32)).decode()
    try:
        for keys in ((old, new), (new, old), (new,)):
            lab.write_keys(*keys)
            for h in (h1, h2):
                r = cli(h, lab, "keys", "reload")
                assert r.returncode == 0 and f"reloaded {len(keys)} key(s)" in r.stdout, r
            time.sleep(0.5)  # deliberate: let gossip run on each step of the rotation
        out, _ = pinger.communicate(timeout=30)
        sent, got = loss(out)
        assert got == sent, out
        for h in (h1, h2):
            st = api(h, "/status")
            assert st["members"] == {"alive": 2}, st
            assert st["counters"].get("dropped_auth", 0) == 0, st["counters"]
        scratch.run(h1, "k3", "--network", "kr", IMAGE, *SLEEP)
        wait_for(
            "k2 -> k3 (after the rotation)",
            lambda: ping(h2, "k2", ip_of(h1, "k3", "kr")),
            timeout=15,
        )
    finally:
        lab.write_keys(new)
        lab.gossip_key = new  # restarts in later tests use the current key
