"""Helpers shared by the test tiers (importable as `support`, see pyproject pythonpath)."""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from netprobe import SERVER, TCP_LOOP, UDP_LOOP

from lab.hosts import IMAGE, Host, Lab, overlay_ip
from lab.registry import Release
from pyoverlay.driver.core.interfaces import UnderlayInfo
from pyoverlay.driver.core.model import Underlay
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.ipam.service import IpamService
from pyoverlay.plugin.admin import ADMIN_SOCKET
from testing.fakes import FakeKernel

UNDERLAY = UnderlayInfo(IPv4Address("192.0.2.10"), "eth0", 1500)


def require_root() -> None:
    """Skip when not root, but fail in CI (CI=true), where the tier must run."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test tier needs root, and CI must run it")
        pytest.skip("needs root")


ip_of = overlay_ip  # the address of a container on a network
# a task that answers every TCP connection on port 7000 with its hostname
HOSTNAME_SERVER = (IMAGE, "nc", "-ll", "-p", "7000", "-e", "/bin/hostname")
# a task that answers TCP on 7000 and UDP on 7053 with "<its hostname> <the client's
# address as it sees it>" (netprobe.SERVER): the host's own python3, bind-mounted read-only
# into the busybox image (which has no UDP server)
PROBE_SERVER = (
    "--mount", "type=bind,source=/usr,target=/usr,readonly",
    "--mount", "type=bind,source=/usr/lib,target=/lib,readonly",
    "--mount", "type=bind,source=/usr/lib64,target=/lib64,readonly",
    IMAGE, "sh", "-c", 'exec /usr/bin/python3 -c "$0" "$(hostname)"', SERVER,
)  # fmt: skip


def probe(lab: Lab, protocol: str, address: str, port: int, n: int) -> list[str]:
    """n TCP connections (or UDP datagrams, each from a new port) from a client on the
    underlay to address:port: one answer each ("refused", "lost", "error ..." if none)."""
    loop = TCP_LOOP if protocol == "tcp" else UDP_LOOP
    out = lab.underlay("python3", "-c", loop, str(n), address, str(port), timeout=30 + 5 * n)
    return out.stdout.splitlines()


def plugin_swarm(lab: Lab, release: Release) -> Iterator[Lab]:
    """Body of a module-scoped `swarm` fixture: every host runs the managed plugin at
    global scope, installed from the session's release (`docker plugin install` from a
    registry), in one swarm (h1 the manager); afterwards services, swarm and plugin go."""
    for h in lab.hosts:
        install(h, lab, release, "PYOVERLAY_SCOPE=global")
    lab.swarm(managers=1)
    yield lab
    h1 = lab.host(1)
    for svc in h1.docker("service", "ls", "-q", check=False).stdout.split():
        h1.docker("service", "rm", svc, check=False)
    for h in reversed(lab.hosts):
        h.docker("swarm", "leave", "--force", check=False, timeout=120)
    for h in lab.hosts:
        h.remove_plugin()


def install(h: Host, lab: Lab, release: Release, *settings: str) -> None:
    """pyoverlay as a managed plugin on h, as users install it: `docker plugin install`
    from a registry (a lab host: the session's release; a Vagrant VM: the registry its
    provisioning uses)."""
    if isinstance(lab, Lab):
        h.install_plugin(*settings, remote=release.serve(lab))
    else:
        h.install_plugin(*settings)


class Services:
    def __init__(self, state_dir: Path, kernel: FakeKernel | None = None) -> None:
        self.state_dir = state_dir
        self.kernel = kernel or FakeKernel(UNDERLAY)
        self.driver = OverlayDriver(
            self.kernel,
            state_dir / "driver.json",
            "node1",
            Underlay(UNDERLAY.address, 4789, UNDERLAY.mtu),
        )
        self.ipam = IpamService(state_dir / "ipam.json")
        self.driver.load()
        self.ipam.load()

    def restarted(self) -> Services:
        """A new plugin process on the same state dir and the same kernel."""
        return Services(self.state_dir, self.kernel)


def api(h: Host, path: str, method: str = "GET") -> Any:
    """What `pyoverlay status|members|peers|services --json` prints, from the plugin's
    admin API directly: the CLI's own data without starting a Python process per call (a
    wait that polls it would spend seconds of CPU; in a VM, minutes). For VM hosts, curl
    over ssh."""
    sock = h.state_dir / ADMIN_SOCKET
    if not isinstance(h, Host):  # a Vagrant VM
        r = h.run("curl", "-sf", "--max-time", "30", "-X", method, "--unix-socket", str(sock),
                  f"http://p{path}")  # fmt: skip
        return json.loads(r.stdout)
    conn = UnixHTTPConnection(str(sock))
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"admin API {path}: HTTP {resp.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(30)
            s.connect(self.path)
        except OSError:
            s.close()  # (a plugin not up yet: polled, so each attempt must not leak)
            raise
        self.sock = s


def cli(h: Host, lab: Lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`pyoverlay ARGS` against host h's plugin."""
    return h.run(
        lab.pyoverlay, *args, "--state-dir", str(h.state_dir), check=False, timeout=timeout
    )


class Scratch:
    """Networks and containers a test made, removed at its end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.made: list[tuple[Host, str, str]] = []

    def network(self, host: Host, name: str, *args: str) -> str:
        d = host.driver  # pyoverlay, or pyoverlay:latest for a managed plugin
        nid = host.docker(
            "network", "create", "-d", d, "--ipam-driver", d, *args, name
        ).stdout.strip()
        self.made.append((host, "network", name))
        return nid

    def run(self, host: Host, name: str, *args: str) -> str:
        self.made.append((host, "container", name))
        return host.docker("run", "-d", "--name", name, *args).stdout.strip()

    def forget(self, host: Host) -> None:
        """Leave what was made on `host` to the lab's teardown: its plugin is gone for
        good, and each docker call that would reach it waits out dockerd's retries (kill
        its dockerd too once done with it, or the teardown's `docker rm -f` waits)."""
        self.made = [m for m in self.made if m[0] is not host]

    def cleanup(self) -> None:
        for host, kind, name in reversed(self.made):
            if host.dockerd_pid is None:
                continue
            if kind == "container":
                host.docker("rm", "-f", name, check=False)
            else:
                host.docker("network", "rm", name, check=False)


def mac_of(h: Host, container: str, network: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "%s").MacAddress}}' % network
    return h.docker("inspect", "-f", fmt, container).stdout.strip()


def ping(h: Host, container: str, ip: str, count: int = 1, wait: int = 2) -> bool:
    r = h.docker("exec", container, "ping", "-c", str(count), "-W", str(wait), ip, check=False)
    return r.returncode == 0


def both(scratch: Scratch, lab: Lab, name: str, subnet: str) -> dict[str, str]:
    """The same network on every host; returns host name -> its overlay namespace."""
    out = {}
    for h in lab.hosts:
        nid = scratch.network(h, name, "--subnet", subnet)
        out[h.name] = f"1-{nid[:10]}"
    return out


def start_ping(h: Host, container: str, target: str, count: int) -> subprocess.Popen[str]:
    """A 20 ms ping (busybox ping's -i takes fractions) from `container` on `h`, returned
    once its first reply is in (so what follows happens while it runs)."""
    proc = h.docker_popen(
        "exec", container, "ping", "-c", str(count), "-i", "0.02", "-W", "1", target
    )
    first_reply(proc)
    return proc


def first_reply(proc: subprocess.Popen[str]) -> str:
    """Read a ping's output up to its first reply line, a byte at a time from the pipe:
    `readline()` would read ahead into the file object's buffer, which `communicate()`
    does not see (it reads the pipe itself), so the lines after it could go missing
    (on a busy machine the first two replies arrive in one read: a reply looked lost)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    while b"bytes from" not in line:
        line = b""
        while not line.endswith(b"\n"):
            c = os.read(fd, 1)
            assert c, "ping ended before its first reply"
            line += c
    return line.decode()


class Pinger:
    """A 20 ms ping from `container` on `h` that runs until stop() (so a test can end it
    once what it waits for has happened, not at a guessed count). Started, it has had
    its first reply."""

    def __init__(self, h: Host, container: str, target: str) -> None:
        self.h, self.container = h, container
        pidfile = f"/tmp/pinger-{target}.pid"
        self.pidfile = pidfile
        script = f"echo $$ > {pidfile}; exec ping -i 0.02 -W 1 {target}"
        self.proc = h.docker_popen("exec", container, "sh", "-c", script)
        self.first = first_reply(self.proc)

    def stop(self, timeout: float = 60) -> tuple[str, int, int]:
        """SIGINT in the container (busybox ping prints its summary): (output, sent, got).
        The request in flight when it stopped is not counted as sent."""
        self.h.docker("exec", self.container, "sh", "-c", f"kill -INT $(cat {self.pidfile})")
        out, _ = self.proc.communicate(timeout=timeout)
        sent, got = loss(out)
        seqs = {int(x) for x in re.findall(r"seq=(\d+)", self.first + out)}
        if sent and sent - 1 not in seqs and len(seqs) == got:
            sent -= 1  # interrupted before its reply could come
        return self.first + out, sent, got

    def kill(self) -> None:
        """Teardown after a failure: end it whatever state it is in."""
        if self.proc.poll() is None:
            self.h.docker(
                "exec", self.container, "sh", "-c", f"kill $(cat {self.pidfile})", check=False
            )
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def peers_in_order(*hosts: Host) -> bool:
    """`pyoverlay peers` on every host: each entry programmed (or local), nothing stale."""
    return all(
        p["state"] in ("ok", "local") and not v["stale"]
        for h in hosts
        for v in api(h, "/peers")
        for p in v["peers"]
    )


def lost_report(out: str, sent: int) -> str:
    """Which replies of a ping are missing, as seq ranges with the time into the ping at
    20 ms each (approximate on a busy machine), then the ping's summary: what a failure
    message starts with (CI logs cut the middle of a long ping's output)."""
    seqs = {int(x) for x in re.findall(r"seq=(\d+)", out)}
    missing = [s for s in range(sent) if s not in seqs]
    ranges: list[str] = []
    for s in missing:
        if ranges and ranges[-1].endswith(f"-{s - 1}"):
            ranges[-1] = ranges[-1].rsplit("-", 1)[0] + f"-{s}"
        elif ranges and ranges[-1] == f"{s - 1}":
            ranges[-1] += f"-{s}"
        else:
            ranges.append(str(s))
    spans = ", ".join(f"seq {r} (~{int(r.split('-')[0]) * 0.02:.1f} s in)" for r in ranges[:20])
    tail = "\n".join(out.strip().splitlines()[-3:])
    return f"{len(missing)} of {sent} lost: {spans or 'none by seq'}\n{tail}"


class KernelEvents:
    """What the kernel saw while a test ran: `ip -ts monitor` (neighbours, links, routes)
    and `bridge -ts monitor fdb` in namespaces of lab hosts (None: the host's own), and
    `ip -ts xfrm monitor` where asked; for a failure message. A thread per monitor keeps
    its last lines (the pipe never fills); each monitor is bounded by `timeout` inside
    the host, so none outlives the test even if it is not stopped. A context manager:
    `stop()` on the way out whatever happened; `seen` holds the text."""

    KEEP = 400  # lines kept per monitor (the newest)

    def __init__(self, where: list[tuple[Any, str | None]], xfrm: bool = False) -> None:
        self.where = where
        self.xfrm = xfrm
        self.procs: list[tuple[str, subprocess.Popen[str], collections.deque[str]]] = []
        self.readers: list[threading.Thread] = []
        self.seen = ""

    def __enter__(self) -> KernelEvents:
        try:
            for h, ns in self.where:
                pre = ["timeout", "900"] + (["ip", "netns", "exec", ns] if ns else [])
                cmds = [
                    ["ip", "-ts", "monitor", "neigh", "link", "route"],
                    ["bridge", "-timestamp", "monitor", "fdb"],
                ] + ([["ip", "-ts", "xfrm", "monitor"]] if self.xfrm else [])
                for cmd in cmds:
                    lines: collections.deque[str] = collections.deque(maxlen=self.KEEP)
                    proc = h.popen(*pre, *cmd)
                    name = f"{h.name}/{ns or 'host'}: {' '.join(cmd)}"
                    self.procs.append((name, proc, lines))
                    t = threading.Thread(target=self._read, args=(proc, lines), daemon=True)
                    t.start()
                    self.readers.append(t)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: collections.deque[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    def stop(self) -> str:
        """Stop every monitor (SIGTERM, which `timeout` passes on); what they printed."""
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for (_, proc, _), reader in zip(self.procs, self.readers, strict=False):
            reader.join(timeout=10)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()  # (its monitor ends at its `timeout` at the latest)
            if proc.stdout is not None and not reader.is_alive():
                proc.stdout.close()
        self.seen = "\n".join(
            f"--- {name} ---\n" + "\n".join(lines) for name, _, lines in self.procs
        )
        return self.seen


PLUGIN_EVENTS = re.compile(
    r'"event": "(member|silent host|ipsec sas [a-z]+|peers programmed|peer entries kept[^"]*'
    r'|gossip synced|synced reconcile|start-up reconcile|serving)"|"level": "(error|warning)"'
)


def plugin_events(h: Any, since: int) -> str:
    """The plugin log lines of `h` after `since` characters that tell what the data path
    went through (members, silent hosts, SAs, entries, errors): for a failure message."""
    lines = [x for x in h.plugin_log()[since:].splitlines() if PLUGIN_EVENTS.search(x)]
    return f"--- {h.name} plugin events ---\n" + "\n".join(lines[-80:])


def loss(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))
