"""Several Docker hosts on one Linux machine, for the demo, the integration tests and benchmarks.

A "host" is a network namespace plus a persisted mount namespace (its own
/sys for that netns, cgroups kept, a private /run/docker/plugins), one
dockerd with its own data-root/exec-root/socket, and optionally one
pyoverlay plugin, both running inside both namespaces.  Hosts are joined by
an underlay: a bridge in its own namespace, one veth per host, addresses
192.168.<net>.<i>/24 that exist only inside these namespaces.

Every name starts with the lab's prefix, every process is recorded by pid,
and Lab.down() removes everything it made, also after a failed test:
containers, networks, plugin and dockerd (SIGTERM, then SIGKILL by pid),
containerd and shims left in the lab's cgroups, mounts, namespaces, files.

Unix socket paths must stay under 108 bytes, hence the short /run/pyo/...
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.docker_verbs import PLUGIN as PLUGIN
from lab.docker_verbs import DockerVerbs, form_swarm

RUN_ROOT = Path("/run/pyo")
LIB_ROOT = Path("/var/lib/pyo")
DOCKER = os.environ.get("PYOVERLAY_DOCKER_CLI", "/usr/bin/docker")
DOCKERD = os.environ.get("PYOVERLAY_DOCKERD", "/usr/sbin/dockerd")
IMAGE = "bb:latest"
ROOT = Path(__file__).resolve().parents[1]  # the checkout (lab/ is never installed elsewhere)
IMAGE_VERSION = 3  # bump when the image's contents change (the tarball is cached)
# The seed's three-tier application, in busybox: a redis-like counter on
# 6379, a web app (httpd + CGI) that asks it over TCP by IP, and a front end
# that forwards its port 80 to the web app.
APP_FILES = {
    "app/kv.sh": (
        "#!/bin/sh\n"
        "# one connection: read a command, bump the counter, answer like redis\n"
        "read -r cmd\n"
        "n=$(cat /tmp/hits 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /tmp/hits\n"
        'echo ":$n"\n'
    ),
    "app/resolve": (
        "#!/bin/sh\n"
        "# an address stays as it is; a name (a swarm service) is looked up in Docker's DNS\n"
        'case "$1" in *[a-z]*)\n'
        "  nslookup \"$1\" 2>/dev/null | awk '/^Address: / {a=$2} END {print a}' ;;\n"
        '  *) echo "$1" ;; esac\n'
    ),
    "app/proxy.sh": "#!/bin/sh\nexec nc $(/app/resolve $(cat /etc/web-addr)) 8888\n",
    "www/cgi-bin/app": (
        "#!/bin/sh\n"
        "kv=$(/app/resolve $(cat /etc/kv-addr))\n"
        "hits=$(echo INCR hits | nc -w 2 $kv 6379)\n"
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
        "me=$(ip -4 -o addr show eth0 | awk '{print $4}')\n"
        'echo "web app on $(hostname) ($me): kv at $kv says hits=$hits"\n'
    ),
    "app/kv-server": "#!/bin/sh\nexec nc -ll -p 6379 -e /app/kv.sh\n",
    "app/web-server": '#!/bin/sh\necho "$1" > /etc/kv-addr\nexec httpd -f -p 8888 -h /www\n',
    "app/front-server": (
        '#!/bin/sh\necho "$1" > /etc/web-addr\nexec nc -ll -p 80 -e /app/proxy.sh\n'
    ),
}
BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh ip ping nc httpd sleep cat ifconfig ls echo hostname route ps grep arp netstat awk "
    "sed env true false cut head tail wc seq printf date tr kill sort uniq nslookup".split()
)


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} -> exit {self.returncode}: {self.stderr.strip()}"


def sh(
    *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise CommandFailed(r.returncode, cmd, r.stdout, r.stderr)
    return r


# how much longer than here waits that include host work take: the labs in the IPsec
# tier's emulated VM set PYOVERLAY_LAB_SLOW (Lab.slow), and so does the VM tier, whose
# VmCluster has its own `slow` for timeouts (here: how far apart wait_for polls)
SLOW = float(os.environ.get("PYOVERLAY_LAB_SLOW", "1"))


def wait_for(what: str, cond: object, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll cond() until true, a last time at the deadline; a command failing or hanging
    inside it counts as false.

    Under emulation (SLOW > 1) polls are at least 0.05 s x SLOW apart, and at least as far
    apart as a check takes: a check spawns processes (nsenter, docker, curl, ssh), and
    polling every 50 ms there takes CPU from what it waits for."""
    assert callable(cond)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        began = time.monotonic()
        try:
            if cond():
                return
        except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError) as exc:
            last = exc
        now = time.monotonic()
        if now >= deadline:
            break
        pause = interval if SLOW == 1 else max(interval, 0.05 * SLOW, now - began)
        time.sleep(min(pause, deadline - now))
    why = f" (last error: {last})" if last else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{why}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (not reaped by PID 1 here) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: only for pids this lab started or owns."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(f"pid {pid} to die", lambda: not pid_alive(pid), timeout=10)


def busybox_tarball() -> Path:
    """A tiny image: busybox-static plus applet links and a web root (built once)."""
    out = LIB_ROOT / f"bb-{IMAGE_VERSION}.tar"
    if out.exists() and out.stat().st_size > 0:
        return out
    LIB_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sub in ("bin", "etc", "tmp", "root", "var/www"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, root / "bin/busybox")
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "var/www/index.html").write_text("hello from pyoverlay\n")
        for path, text in APP_FILES.items():
            f = root / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            f.chmod(0o755)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")  # several builders may race: each its own
        sh("tar", "-C", str(root), "-cf", str(tmp), ".")
        tmp.replace(out)
    return out


@dataclass
class Host(DockerVerbs):
    lab: Lab
    index: int  # 1-based
    dockerd_pid: int | None = None
    plugin_pid: int | None = None
    # Popen handles of what we started, so exits are reaped (PID 1 here does not reap)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    plugin_args: list[str] = field(default_factory=list)
    driver: str = "pyoverlay"  # the driver name Docker knows the plugin by (managed: PLUGIN)

    # -- names and paths ------------------------------------------------------

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{self.lab.prefix}-{self.name}"

    @property
    def address(self) -> str:
        return f"{self.lab.subnet_base}.{self.index}"

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.lab.prefix / self.name

    @property
    def lib_dir(self) -> Path:
        return LIB_ROOT / self.lab.prefix / self.name

    @property
    def mnt(self) -> Path:
        return RUN_ROOT / self.lab.prefix / f"{self.name}.mnt"

    @property
    def sandbox_dir(self) -> Path:
        """dockerd's container namespaces (its --exec-root/netns)."""
        return self.run_dir / "exec" / "netns"

    @property
    def docker_sock(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def plugins_dir(self) -> Path:
        """What this host sees as /run/docker/plugins."""
        return self.lib_dir / "plugins"

    @property
    def state_dir(self) -> Path:
        return self.lib_dir / "state"

    @property
    def cgroup_parent(self) -> str:
        return f"/pyo-{self.lab.prefix}-{self.name}"

    # -- running things inside -------------------------------------------------

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--mount={self.mnt}", f"--net=/run/netns/{self.netns}"]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh(*self.nsenter(), *cmd, check=check, timeout=timeout)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # in the IPsec tier's emulated guest (lab.slow 8) beside booting VMs, a `docker run`
        # took over 2 minutes after pyoverlay's Join had answered in 1.8 s (CI-15)
        timeout *= min(self.lab.slow, 4)
        return sh(DOCKER, "-H", f"unix://{self.docker_sock}", *args, check=check, timeout=timeout)

    def in_container_netns(
        self, container: str, *cmd: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a host tool (iperf3, ip) in a container's network namespace."""
        pid = self.container_pid(container)
        return sh("nsenter", f"--net=/proc/{pid}/ns/net", *cmd, timeout=timeout)

    # -- life cycle ------------------------------------------------------------

    def ns_up(self) -> None:
        for d in (self.run_dir, self.plugins_dir, self.lib_dir / "data", self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        cg_aside = RUN_ROOT / self.lab.prefix / f".cg-{self.name}"
        cg_aside.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        self.mnt.touch()
        script = (
            f"mount --rbind /sys/fs/cgroup {cg_aside}; "
            "mount -t sysfs sysfs /sys; "
            f"mount --move {cg_aside} /sys/fs/cgroup; "
            "mkdir -p /run/docker/plugins; "
            f"mount --bind {self.plugins_dir} /run/docker/plugins; "
            # a private /run/netns: the plugin's per-network namespaces live
            # and die with this host (the files under a shared /run/netns
            # would outlive it and show up in every other host's `ip netns`)
            "mount -t tmpfs -o mode=755 pyoverlay-lab-netns /run/netns; "
            # shared, so a managed plugin's rshared bind of /run/netns propagates back
            "mount --make-shared /run/netns; "
            # dockerd's container namespaces, shared so a managed plugin's rslave
            # mount (config.json `sandboxes`) sees the ones made after it started
            f"mkdir -p {self.sandbox_dir}; "
            f"mount --bind {self.sandbox_dir} {self.sandbox_dir}; "
            f"mount --make-shared {self.sandbox_dir}"
        )
        sh(
            "unshare",
            f"--mount={self.mnt}",
            "--propagation",
            "slave",
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "sh",
            "-ec",
            script,
        )

    def start_dockerd(self, *extra: str) -> None:
        """dockerd on this host, answering; started again if it gives up while starting
        (its containerd has a start-up deadline that a starved emulated CPU can miss: under
        emulation up to 6 tries, CI-39 saw 3 fail in a row beside a busy machine)."""
        tries = 3 if SLOW == 1 else 6
        for attempt in range(tries):
            self._spawn_dockerd(*extra)
            proc = self.procs[self.dockerd_pid or 0]

            def up(proc: subprocess.Popen[bytes] = proc) -> bool:  # answers, or gave up
                if proc.poll() is not None:
                    return True
                return (
                    self.docker("version", check=False, timeout=10 * self.lab.slow).returncode == 0
                )

            try:
                wait_for(f"dockerd on {self.name}", up, timeout=60 * self.lab.slow)
            except TimeoutError as exc:
                tail = (self.lib_dir / "dockerd.log").read_text(errors="replace")[-3000:]
                raise TimeoutError(f"{exc}; its log ends:\n{tail}") from None
            if proc.poll() is None:
                return
            if attempt == tries - 1:
                tail = (self.lib_dir / "dockerd.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"dockerd on {self.name} exited {tries} times starting:\n{tail}")
            self._reap(proc.pid)
            (self.run_dir / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def _spawn_dockerd(self, *extra: str) -> None:
        log = open(self.lib_dir / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [
                *self.nsenter(),
                DOCKERD,
                "--data-root",
                str(self.lib_dir / "data"),
                "--exec-root",
                str(self.run_dir / "exec"),
                "-H",
                f"unix://{self.docker_sock}",
                "--pidfile",
                str(self.run_dir / "docker.pid"),
                "--cgroup-parent",
                self.cgroup_parent,
                *extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.dockerd_pid = proc.pid  # nsenter execs dockerd: same pid
        self.procs[proc.pid] = proc

    def stop_dockerd(self, sig: int = signal.SIGTERM) -> None:
        if self.dockerd_pid is None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.dockerd_pid, signal.SIGKILL)
            wait_for("dockerd to die", lambda: not pid_alive(self.dockerd_pid or 0), timeout=10)
        else:
            kill_pid(self.dockerd_pid, timeout=60)
        self._reap(self.dockerd_pid)
        self.dockerd_pid = None

    def start_plugin(self, *args: str, env: dict[str, str] | None = None) -> None:
        if args:
            self.plugin_args = list(args)
        self.plugins_dir.mkdir(parents=True, exist_ok=True)
        sock = self.plugins_dir / "pyoverlay.sock"
        sock.unlink(missing_ok=True)
        log = open(self.lib_dir / "plugin.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *self.nsenter(),
                self.lab.pyoverlay,
                "plugin",
                "--socket",
                "/run/docker/plugins/pyoverlay.sock",
                "--state-dir",
                str(self.state_dir),
                "--log-format",
                "json",
                "--docker-host",
                f"unix://{self.docker_sock}",
                "--sandbox-dir",
                str(self.sandbox_dir),
                *self.plugin_args,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        log.close()
        self.plugin_pid = proc.pid
        self.procs[proc.pid] = proc
        deadline = time.monotonic() + 20 * self.lab.slow
        while not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"pyoverlay plugin on {self.name} exited ({proc.returncode}):\n"
                    + self.plugin_log()[-3000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"pyoverlay plugin on {self.name} did not create its socket")
            time.sleep(0.02)

    def plugin_log(self) -> str:
        try:
            return (self.lib_dir / "plugin.log").read_text()
        except FileNotFoundError:
            return ""

    def stop_plugin(self, sig: int = signal.SIGTERM) -> None:
        pid = self.plugin_pid
        if pid is None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for("plugin to die", lambda: not pid_alive(pid), timeout=10)
        else:
            kill_pid(pid, timeout=15)
        self._reap(pid)
        self.plugin_pid = None

    def _reap(self, pid: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is not None:
            proc.wait(timeout=10)

    def import_image(self) -> None:
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        self.docker("import", str(busybox_tarball()), IMAGE)

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        """A long-running command inside the host; its stdout is a pipe."""
        return subprocess.Popen([*self.nsenter(), *cmd], stdout=subprocess.PIPE, text=True)

    def docker_popen(self, *args: str) -> subprocess.Popen[str]:
        """A long-running docker command (e.g. `exec ... ping`); its stdout is a pipe."""
        cmd = [DOCKER, "-H", f"unix://{self.docker_sock}", *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def power_off(self) -> None:
        """The host goes away at once (the VM backend halts a VM instead)."""
        self.crash()

    def power_on(self) -> None:
        """Back with its link, then the plugin before dockerd, as a systemd unit orders
        them: dockerd restarts containers with a restart policy at once."""
        self.set_link(True)
        self.start_plugin()
        self.start_dockerd()

    def crash(self) -> None:
        """Like a power cut: its link down first (a host that is gone answers nothing, not
        even a refused connection), then every process of this host killed (SIGKILL)."""
        self.set_link(False)
        self.stop_plugin(signal.SIGKILL)
        self.stop_dockerd(signal.SIGKILL)
        pidfile = self.run_dir / "exec" / "containerd" / "containerd.pid"
        pids = self._cgroup_pids()
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pidfile.read_text().strip()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(TimeoutError):
                wait_for(f"pid {pid} to die", lambda p=pid: not pid_alive(p), timeout=10)
        # a reboot starts with an empty /run: without this the new dockerd would
        # wait for the killed containerd (a zombie here: PID 1 does not reap)
        pidfile.unlink(missing_ok=True)

    def install_plugin(self, *settings: str, remote: str = "") -> None:
        """pyoverlay as a managed plugin on this host's dockerd, enabled: built here
        (scripts/build-plugin) and `docker plugin set`, or with `remote` installed from a
        registry with the settings on the install line, as the README says. The lab's
        key is in a 0600 file in the state mount; `settings` are added to the lab's."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "gossip.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.lab.gossip_key + "\n")
        every = [
            "PYOVERLAY_GOSSIP_KEY_FILE=gossip.key",
            f"PYOVERLAY_ADVERTISE_ADDR={self.address}",
            *self.plugin_mounts(),
            *settings,
        ]
        if remote:
            self.docker("plugin", "install", "--grant-all-permissions", "--alias", PLUGIN,
                        remote, *every, timeout=600)  # fmt: skip
            self.driver = PLUGIN
            return
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.docker_sock}"}
        r = subprocess.run(
            [str(ROOT / "scripts/build-plugin")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0 or r.stdout.strip().splitlines()[-1:] != [PLUGIN]:
            raise RuntimeError(f"scripts/build-plugin failed: {r.stderr[-3000:]}")
        self.docker("plugin", "set", PLUGIN, *every)
        self.docker("plugin", "enable", PLUGIN, timeout=120)
        self.driver = PLUGIN

    def plugin_mounts(self) -> list[str]:
        """The plugin's mount sources on this lab host (a user's host keeps the defaults)."""
        return [
            f"state.source={self.state_dir}",
            f"sandboxes.source={self.sandbox_dir}",
            f"docker-sock.source={self.docker_sock}",
        ]

    def remove_plugin(self) -> None:
        """Every container, network and the managed plugin itself, whatever state is left."""
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        nets = self.docker("network", "ls", "-q", "--filter", f"driver={PLUGIN}", check=False)
        if nets.stdout.split():
            self.docker("network", "rm", *nets.stdout.split(), check=False)
        self.docker("plugin", "disable", "-f", PLUGIN, check=False)
        self.driver = "pyoverlay"
        self.docker("plugin", "rm", "-f", PLUGIN, check=False)

    def set_link(self, up: bool) -> None:
        """The host's underlay link down (a crash, a cable) or up again with its default route."""
        self.run("ip", "link", "set", "eth0", "up" if up else "down")
        if up:
            self.run("ip", "route", "replace", "default", "via", f"{self.lab.subnet_base}.254")

    def overlay_namespaces(self) -> list[str]:
        """pyoverlay namespaces as this host sees them (`ip netns` inside the host)."""
        out = self.run("ip", "netns", "list").stdout
        return sorted(line.split()[0] for line in out.splitlines() if line.startswith("1-"))

    def ns_exec(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.run("ip", "netns", "exec", ns, *cmd)

    # -- teardown --------------------------------------------------------------

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in Path("/sys/fs/cgroup").glob(f"*{self.cgroup_parent}/**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(x) for x in procs.read_text().split()}
        return pids

    def down(self) -> list[str]:
        problems: list[str] = []
        if self.dockerd_pid and pid_alive(self.dockerd_pid):
            try:
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
                if self.plugin_pid and pid_alive(self.plugin_pid):
                    nets = self.docker(
                        "network", "ls", "-q", "--filter", "driver=pyoverlay", timeout=30
                    ).stdout.split()
                    if nets:
                        self.docker("network", "rm", *nets, check=False, timeout=60)
            except (subprocess.SubprocessError, OSError) as exc:
                problems.append(f"{self.name}: docker cleanup: {exc}")
        for stop in (self.stop_plugin, self.stop_dockerd):
            try:
                stop()
            except (TimeoutError, OSError) as exc:
                problems.append(f"{self.name}: {exc}")
        # containerd (child of dockerd) and shims may outlive a killed dockerd
        pidfile = self.run_dir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            kill_pid(int(pidfile.read_text().strip()), timeout=10)
        for pid in self._cgroup_pids():
            with contextlib.suppress(OSError, TimeoutError):
                kill_pid(pid, timeout=5)
        for m in self._mounts_under(self.run_dir):
            sh("umount", "-l", m, check=False)
        if self.mnt.exists():
            sh("umount", "-l", str(self.mnt), check=False)
            self.mnt.unlink(missing_ok=True)
        sh("ip", "netns", "del", self.netns, check=False)
        for cg in sorted(Path("/sys/fs/cgroup").glob(f"*{self.cgroup_parent}"), reverse=True):
            for d in sorted(cg.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems

    @staticmethod
    def _mounts_under(path: Path) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return sorted((p for p in points if p.startswith(str(path))), reverse=True)


def managed_plugin_pid(h: Host, check: bool = True) -> int | None:
    """The pid of host h's managed pyoverlay plugin (it shares h's network namespace)."""
    want = os.stat(f"/run/netns/{h.netns}").st_ino
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"plugin" in cmd and any(c.endswith(b"/pyoverlay") for c in cmd):
                if os.stat(proc / "ns" / "net").st_ino == want:
                    return int(proc.name)
        except OSError:
            continue
    if check:
        raise LookupError(f"no managed pyoverlay plugin on {h.name}")
    return None


def overlay_ip(h: Host, container: str, network: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "' + network + '").IPAddress}}'
    return h.docker("inspect", "-f", fmt, container).stdout.strip()


def start_seed_app(
    kv: Host,
    web: Host,
    front: Host,
    network: str,
    run: Callable[..., object] | None = None,
) -> dict[str, str]:
    """The seed's three tiers on the given hosts; front publishes 1080:80.

    `run(host, name, *docker_run_args)` starts a container (default: `docker
    run -d --name name ...`; tests pass their cleanup-tracking runner).
    Returns container name -> address on `network`.
    """

    def default_run(h: Host, name: str, *args: str) -> object:
        return h.docker("run", "-d", "--name", name, *args)

    start = run or default_run
    ips: dict[str, str] = {}
    start(kv, "kv", "--network", network, IMAGE, "/app/kv-server")
    ips["kv"] = overlay_ip(kv, "kv", network)
    start(web, "web", "--network", network, IMAGE, "/app/web-server", ips["kv"])
    ips["web"] = overlay_ip(web, "web", network)
    start(
        front,
        "front",
        "--network",
        network,
        "-p",
        "1080:80",
        IMAGE,
        "/app/front-server",
        ips["web"],
    )
    ips["front"] = overlay_ip(front, "front", network)
    return ips


class Lab:
    """N Docker hosts on one underlay bridge, all named with `prefix`."""

    slow = SLOW  # (VmCluster: its own)

    def __init__(
        self,
        prefix: str,
        hosts: int = 2,
        subnet_base: str = "192.168.99",
        pyoverlay: str | None = None,
        keep_data: bool = False,
        gossip: bool = True,
        plugin_args: Sequence[str] = ("--gossip-pushpull", "5", "--reconcile-interval", "5"),
    ) -> None:
        self.prefix = prefix
        self.gossip_key = base64.b64encode(os.urandom(32)).decode() if gossip else ""
        self.plugin_args = list(plugin_args)
        self.subnet_base = subnet_base
        self.pyoverlay = pyoverlay or str(Path(sys.executable).with_name("pyoverlay"))
        self.hosts = [Host(self, i + 1) for i in range(hosts)]
        self.keep_data = keep_data
        self._up = False
        self.cleanups: list[Callable[[], None]] = []  # run by down(), newest first
        self.registry: Any = None  # lab/registry.py's LabRegistry, when one serves this lab

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    def host(self, i: int) -> Host:
        return self.hosts[i - 1]

    def up(self, plugin: bool = True, dockerd_args: Sequence[str] = ()) -> Lab:
        self._up = True
        ul = self.underlay_ns
        sh("ip", "netns", "add", ul)
        sh("ip", "-n", ul, "link", "set", "lo", "up")
        sh("ip", "-n", ul, "link", "add", "br-ul", "type", "bridge")
        sh("ip", "-n", ul, "addr", "add", f"{self.subnet_base}.254/24", "dev", "br-ul")
        sh("ip", "-n", ul, "link", "set", "br-ul", "up")
        for h in self.hosts:
            h.ns_up()
            a, b = f"{self.prefix}{h.name}p", f"{self.prefix}{h.name}e"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", ul)
            sh("ip", "link", "set", b, "netns", h.netns)
            sh("ip", "-n", h.netns, "link", "set", b, "name", "eth0")
            sh("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", h.netns, "route", "add", "default", "via", f"{self.subnet_base}.254")
            sh("ip", "-n", ul, "link", "set", a, "master", "br-ul", "up")

        def start(h: Host) -> None:
            h.start_dockerd(*dockerd_args)
            h.import_image()
            if plugin:
                h.start_plugin(*self.default_plugin_args(h))

        # every host at once (a dockerd start is mostly waiting): a late one joins the
        # others through gossip's retries, as a host booting after them would; one after
        # the other under emulation (slow), where starting is all CPU
        busybox_tarball()  # built once, before the hosts import it
        at_once = len(self.hosts) if self.slow == 1 else 1
        with ThreadPoolExecutor(max_workers=at_once) as pool:
            for f in [pool.submit(start, h) for h in self.hosts]:
                f.result()
        return self

    @property
    def key_file(self) -> Path:
        """The lab's gossip key, mode 0600 (keys never go on a command line)."""
        return LIB_ROOT / self.prefix / "gossip.key"

    def write_keys(self, *keys: str) -> None:
        """Replace the key file's lines (first sends, all receive); atomic, 0600."""
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(k + "\n" for k in keys))
        os.replace(tmp, self.key_file)

    def swarm(self, managers: int = 1) -> None:
        form_swarm(self.hosts, managers)

    def default_plugin_args(self, h: Host) -> list[str]:
        """Every host joins through h1 with the lab's gossip key (from a 0600 file)."""
        args = list(self.plugin_args)
        if self.gossip_key:
            if not self.key_file.exists():
                self.write_keys(self.gossip_key)
            args += ["--gossip-key-file", str(self.key_file)]
            others = [o.address for o in self.hosts if o is not h]
            if h.index != 1 and others:
                args += ["--join", ",".join(others)]
        return args

    def down(self) -> list[str]:
        problems: list[str] = []
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as exc:  # the rest is still taken down
                problems.append(f"lab clean-up: {exc!r}")
        with ThreadPoolExecutor(max_workers=max(1, len(self.hosts))) as pool:
            for found in pool.map(lambda h: h.down(), self.hosts):
                problems += found
        sh("ip", "netns", "del", self.underlay_ns, check=False)
        shutil.rmtree(RUN_ROOT / self.prefix, ignore_errors=True)
        if not self.keep_data:
            shutil.rmtree(LIB_ROOT / self.prefix, ignore_errors=True)
        self._up = False
        return problems

    @contextlib.contextmanager
    def running(self, plugin: bool = True) -> Iterator[Lab]:
        try:
            yield self.up(plugin=plugin)
        finally:
            problems = self.down()
            if problems:
                print("lab teardown problems:", json.dumps(problems), file=sys.stderr)

    def underlay(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.underlay_ns, *cmd, timeout=timeout)

    def http_get(self, host: Host, port: int, path: str = "/") -> str:
        """An HTTP/1.0 GET from a client on the underlay to host:port (busybox nc)."""
        request = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'"
        return self.underlay(
            "sh", "-c", f"{request} | busybox nc -w 3 {host.address} {port}", timeout=30
        ).stdout

    def capture_vxlan(self, count: int, timeout: int = 20) -> subprocess.Popen[str]:
        """tcpdump on the underlay bridge: the first `count` VXLAN packets (read .communicate())."""
        cmd = ["ip", "netns", "exec", self.underlay_ns, "timeout", str(timeout)]
        cmd += ["tcpdump", "-lni", "br-ul", "-c", str(count), "udp", "port", "4789"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on br-ul ...": it is capturing from here on
        return proc
