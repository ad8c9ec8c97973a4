"""footprint: the plugin's memory and CPU at idle, and its memory with 5,000 rows.

* idle (two lab hosts, one network with a container on each, gossip synced,
  the default timings): the plugin's RSS and CPU over 30 s, with glibc's default malloc arenas and
  with MALLOC_ARENA_MAX=2 (what the Dockerfile and the systemd unit set); then
  the CPU with the default probe interval and with --gossip-probe-interval 1,
  alternated round by round;
* managed: the same idle shape with the plugin as `docker plugin install` runs it
  (its own root filesystem, only the runtime packages), beside dockerd's RSS on
  the same host; and what each package the plugin imports adds, measured in that
  root filesystem (the lab's venv also holds the dev tools: there `structlog`
  imports `rich` and `pygments`, ~10 MiB the plugin never carries);
* rows: in a fresh interpreter with the plugin's modules imported, a gossip
  node that holds 5,000 endpoint rows of one network and the driver's parsed
  view of them: RSS before and after (the plugin process holds these plus
  its sockets and tasks).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

from lab.hosts import IMAGE, Host, Lab, managed_plugin_pid, wait_for
from lab.measure import cpu_seconds, paired, rss_mib

ROWS_SCRIPT = r"""
import json, random, pyoverlay.plugin.server
from ipaddress import IPv4Address
from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.node import GossipNode
from pyoverlay.driver.overlay import peers

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

before = rss()
node = GossipNode("me", "192.0.2.1:7966", GossipConfig.lan(), random.Random(1), 0.0)
node.join_network(0.0, "5000")
for k in range(5000):
    ip = IPv4Address("10.100.0.10") + k
    value = peers.row_value(ip, "02:42:" + ip.packed.hex(":"), IPv4Address("192.0.3.1") + k % 200)
    node.table.merge(1.0, {"s": "peer/5000", "k": "%064x" % k, "o": "h%d" % (k % 200),
                           "l": 10**12 + k, "v": value})
parsed = [peers.RemoteEndpoint.from_row(r.key, r.value or {}, r.version)
          for r in node.table.visible("peer/5000")]
print(json.dumps({"import_mib": round(before, 1), "with_rows_mib": round(rss(), 1),
                  "rows": len(parsed)}))
"""


INTERVAL = 10.0  # the default --reconcile-interval


def _peers_ok(lab: Lab, h: Host) -> bool:
    """`pyoverlay peers` on h lists a remote endpoint and every one is programmed."""
    out = h.run(lab.pyoverlay, "peers", "--json", "--state-dir", str(h.state_dir)).stdout
    states = [p["state"] for v in json.loads(out) for p in v["peers"] if p["state"] != "local"]
    return bool(states) and set(states) == {"ok"}


def _defaults(args: list[str]) -> list[str]:
    """The lab's plugin arguments with the default timings (the lab shortens them)."""
    out = list(args)
    for flag, value in (("--gossip-pushpull", "30"), ("--reconcile-interval", str(INTERVAL))):
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


def env(arenas: str) -> dict[str, str] | None:
    return {"MALLOC_ARENA_MAX": arenas} if arenas else None


def _idle_once(
    lab: Lab, arenas: str, extra: tuple[str, ...], seconds: float
) -> tuple[float, float]:
    """Plugins restarted with these settings, the network "fp" with a container on each
    host, h1 programmed: h1's plugin's (RSS MiB, CPU fraction of a core) over `seconds`."""
    for h in lab.hosts:
        h.stop_plugin()
        h.start_plugin(*_defaults(lab.default_plugin_args(h)), *extra, env=env(arenas))
    h1 = lab.hosts[0]
    try:
        for h in lab.hosts:
            h.create_network("fp", "100.9.0.0/24")
            h.docker("run", "-d", "--name", f"fp{h.name}", "--network", "fp", IMAGE, "sleep", "600")
        wait_for("h1 programmed h2's container", partial(_peers_ok, lab, h1), timeout=30)
        pid = h1.plugin_pid
        assert pid is not None
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        return rss_mib(pid), cpu
    finally:
        for h in lab.hosts:
            h.docker("rm", "-f", f"fp{h.name}", check=False)
            h.docker("network", "rm", "fp", check=False)


PROBE_1S = ("--gossip-probe-interval", "1")


def idle(lab: Lab, report: Callable[..., None], seconds: float = 30.0, rounds: int = 3) -> None:
    """Idle RSS and CPU of h1's plugin: the defaults and MALLOC_ARENA_MAX=2 (one window
    each); then the defaults and --gossip-probe-interval 1 (half the probes) alternated
    for `rounds` windows of `seconds` each: CPU medians, spread and ratio."""
    for suffix, arenas in (("", ""), ("-arena2", "2")):
        rss, cpu = _idle_once(lab, arenas, (), seconds)
        report(
            f"footprint-idle{suffix}", hosts=2, rss_mib=round(rss, 1), cpu_pct=round(cpu * 100, 2)
        )
    cpu_of: dict[str, list[float]] = {"default": [], "probe1s": []}
    for _ in range(rounds):
        for name, extra in (("probe1s", PROBE_1S), ("default", ())):
            cpu_of[name].append(_idle_once(lab, "", extra, seconds)[1] * 100)
    report(
        "footprint-idle-probe1s",
        hosts=2,
        unit="% of a core",
        seconds=seconds,
        **paired("probe1s", cpu_of["probe1s"], "default", cpu_of["default"], digits=2),
    )


def rows(report: Callable[..., None]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", ROWS_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    )
    report("footprint-5000-rows", **json.loads(out.stdout.strip().splitlines()[-1]))


IMPORTS_SCRIPT = r"""
import importlib, json

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

out = {"python": rss()}
before = out["python"]
for name in ("asyncio", "structlog", "pydantic", "cryptography.hazmat.primitives.ciphers.aead",
             "aiohttp.web", "nftables", "pyroute2", "pyoverlay.plugin.server"):
    importlib.import_module(name)
    now = rss()
    out[name.split(".")[0]] = now - before
    before = now
out["total"] = before
print(json.dumps({k: round(v, 1) for k, v in out.items()}))
"""


def _rootfs(h: Host) -> str:
    """The managed plugin's root filesystem on host h."""
    out = h.docker("plugin", "inspect", "-f", "{{.ID}}", h.driver).stdout.strip()
    return str(h.lib_dir / "data" / "plugins" / out / "rootfs")


def _answers(h1: Host, h2: Host) -> bool:
    ip = h2.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                   f"fp{h2.name}").stdout.strip()  # fmt: skip
    r = h1.docker("exec", f"fp{h1.name}", "ping", "-c", "1", "-W", "1", ip, check=False)
    return r.returncode == 0


def managed(report: Callable[..., None], seconds: float = 30.0) -> None:
    lab = Lab("bfm" + secrets.token_hex(1), hosts=2)
    with lab.running(plugin=False):
        for h in lab.hosts:  # the cluster as a user sets it up: every host joins the others
            others = ",".join(o.address for o in lab.hosts if o is not h)
            h.install_plugin(f"PYOVERLAY_JOIN={others}")
        for h in lab.hosts:
            h.create_network("fp", "100.9.0.0/24")
            h.docker("run", "-d", "--name", f"fp{h.name}", "--network", "fp", IMAGE, "sleep", "600")
        h1, h2 = lab.hosts
        wait_for("h1's container reaches h2's", partial(_answers, h1, h2), timeout=60)
        pid = managed_plugin_pid(h1)
        assert pid is not None and h1.dockerd_pid is not None
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        report(
            "footprint-idle-managed",
            hosts=2,
            rss_mib=round(rss_mib(pid), 1),
            cpu_pct=round(cpu * 100, 2),
            dockerd_rss_mib=round(rss_mib(h1.dockerd_pid), 1),
        )
        # in the plugin's own root filesystem, with a /proc of its own mount namespace
        root, python = _rootfs(h1), "/opt/pyoverlay/bin/python3"
        inside = f'mount -t proc proc "{root}/proc" && exec chroot "{root}" {python} -c "$0"'
        out = h1.run(
            "unshare", "--mount", "--propagation", "private", "sh", "-c", inside, IMPORTS_SCRIPT
        ).stdout
        report("footprint-imports-mib", **json.loads(out.strip().splitlines()[-1]))
        for h in lab.hosts:
            h.docker("rm", "-f", f"fp{h.name}", check=False)
            h.docker("network", "rm", "fp", check=False)
