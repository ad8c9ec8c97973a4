"""The Vagrant VMs (the checkout's Vagrantfile) as test hosts, driven over ssh.

`VmCluster` and `VmHost` offer the part of `Lab` and `Host` that the
integration tests marked `vm` use, so the same tests run against namespace
hosts (one kernel) and against two VMs (two kernels, two systemd, a real L2
network). The VMs are made and destroyed by scripts/test-vm; here they are
only used. Each command is one ssh call over a shared connection
(ControlMaster), run with sudo in the VM.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

from lab.docker_verbs import DockerVerbs, form_swarm
from lab.hosts import ROOT, CommandFailed, wait_for

PYOVERLAY = "/opt/pyoverlay/bin/pyoverlay"  # scripts/vm-provision installs it here
STATE_DIR = Path("/var/lib/pyoverlay")
# The box's managed plugin (scripts/build-box). Not pyoverlay:latest: Docker resolves
# `-d pyoverlay` to a managed pyoverlay:latest before the legacy socket, even when that
# plugin is disabled ("plugin pyoverlay found but disabled"), and h1 has both.
PLUGIN = "pyoverlay-plugin:latest"


def vagrant(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        ["vagrant", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise CommandFailed(r.returncode, ["vagrant", *args], r.stdout, r.stderr)
    return r


def virsh(*args: str) -> None:
    r = subprocess.run(
        ["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise CommandFailed(r.returncode, ["virsh", *args], r.stdout, r.stderr)


class VmHost(DockerVerbs):
    def __init__(self, cluster: VmCluster, index: int, name: str, address: str, mode: str):
        self.cluster = cluster
        self.index = index
        self.name = name
        self.address = address
        self.mode = mode  # as `vagrant up` made it: legacy (systemd unit) or managed
        self.running_as = mode  # as now (the swarm round makes every host managed)
        self.driver = "pyoverlay" if mode == "legacy" else PLUGIN  # `docker network create -d`
        self.state_dir = STATE_DIR
        self.dockerd_pid: int | None = 1  # Scratch skips hosts whose dockerd is down
        self.plugin_pid: int | None = 1

    def __repr__(self) -> str:
        return f"VmHost({self.name}, {self.address}, {self.mode})"

    # -- running things inside ---------------------------------------------------

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-F", str(self.cluster.ssh_config), self.name, command]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = self.ssh_argv("sudo -n " + shlex.join(cmd))
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode == 255 and "ssh:" in r.stderr:  # the connection, not the command
            raise ConnectionError(f"ssh to {self.name} failed: {r.stderr.strip()}")
        if check and r.returncode != 0:
            raise CommandFailed(r.returncode, list(cmd), r.stdout, r.stderr)
        return r

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        """A long-running command in the VM; its stdout is a pipe."""
        argv = self.ssh_argv("sudo -n " + shlex.join(cmd))
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return self.run("docker", *args, check=check, timeout=timeout)

    def docker_popen(self, *args: str) -> subprocess.Popen[str]:
        return self.popen("docker", *args)

    def ns_exec(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.run("ip", "netns", "exec", ns, *cmd)

    def overlay_namespaces(self) -> list[str]:
        out = self.run("ip", "netns", "list").stdout
        return sorted(line.split()[0] for line in out.splitlines() if line.startswith("1-"))

    def pyoverlay(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(PYOVERLAY, *args, "--state-dir", str(self.state_dir), check=False)

    # -- the plugin --------------------------------------------------------------

    def plugin_log(self) -> str:
        unit = "pyoverlay" if self.running_as == "legacy" else "docker"
        r = self.run("journalctl", "-u", unit, "-o", "cat", "--no-pager", "-n", "300", check=False)
        return r.stdout

    def _plugin_pids(self) -> list[str]:
        r = self.run("pgrep", "-f", f"^{PYOVERLAY} plugin", check=False)
        return r.stdout.split()

    def stop_plugin(self, sig: int = signal.SIGTERM) -> None:
        """Kill the plugin's process. Its supervisor (systemd, or dockerd for a managed
        plugin) starts it again, as on a user's host."""
        pids = self._plugin_pids()
        if pids:
            self.run("kill", f"-{signal.Signals(sig).name}", *pids, check=False)
        wait_for(
            f"the plugin on {self.name} to die",
            lambda: not set(pids) & set(self._plugin_pids()),
            timeout=15,
        )

    def start_plugin(self) -> None:
        """Wait for the supervisor's restart (start the unit if it was stopped)."""
        if self.running_as == "legacy":
            self.run("systemctl", "start", "pyoverlay")
        wait_for(f"the plugin on {self.name}", self.plugin_up, timeout=60 * self.cluster.slow)

    def plugin_up(self) -> bool:
        """The plugin's admin API answers (curl: a Python start costs seconds here)."""
        sock = str(self.state_dir / "admin.sock")
        r = self.run("curl", "-sf", "--max-time", "30", "--unix-socket", sock, "http://p/status",
                     check=False)  # fmt: skip
        return r.returncode == 0

    def provision(self, mode: str, *settings: str) -> None:
        """Run pyoverlay on this VM as `mode` (legacy or managed) with extra plugin
        `settings` (scripts/vm-provision, as `vagrant up` did)."""
        join = ",".join(h.address for h in self.cluster.hosts if h is not self)
        self.run("/vagrant/scripts/vm-provision", mode, self.address, join, *settings, timeout=900)
        self.driver = "pyoverlay" if mode == "legacy" else PLUGIN
        self.running_as = mode

    def install_plugin(self, *settings: str, remote: str = "") -> None:
        """The managed plugin with `settings` (e.g. PYOVERLAY_SCOPE=global for swarm),
        installed from the registry the VM's provisioning names (`remote` is a lab's)."""
        self.provision("managed", *settings)

    def remove_plugin(self) -> None:
        """Every container and pyoverlay network gone, then pyoverlay as `vagrant up`
        left it on this VM."""
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        for d in ("pyoverlay", PLUGIN):
            nets = self.docker("network", "ls", "-q", "--filter", f"driver={d}", check=False)
            if nets.stdout.split():
                self.docker("network", "rm", *nets.stdout.split(), check=False)
        self.provision(self.mode)

    # -- power and links ---------------------------------------------------------

    def power_off(self) -> None:
        """A power cut: the VM stops dead (`virsh suspend`: no CPU runs, nothing answers).

        What Docker wrote reaches the virtual disk first (`sync`), as on a host that ran a
        while (ext4 commits every 5 s): Docker restarts only a container whose start it
        recorded on disk (HasBeenStartedBefore), and that is Docker's part, not ours. The
        qemu process stays: with the Vagrantfile's cache=unsafe, killing it (`virsh
        destroy`) throws away qcow2 metadata qemu never flushed, and with it files written
        minutes before (a container came back "Created", never started)."""
        self.run("sync", check=False)
        # the shared ssh connection would hang on the stopped VM
        subprocess.run(
            ["ssh", "-F", str(self.cluster.ssh_config), "-O", "exit", self.name],
            capture_output=True,
            timeout=30,
        )
        virsh("suspend", self.domain)
        self.dockerd_pid = self.plugin_pid = None

    def power_on(self) -> None:
        """Power back: a cold boot (`virsh reset`, then `virsh resume`); systemd starts
        pyoverlay and dockerd, and dockerd the containers with a restart policy."""
        try:
            virsh("reset", self.domain)
        finally:
            virsh("resume", self.domain)  # never left paused
        self.dockerd_pid = self.plugin_pid = 1
        wait_for(
            f"the plugin on {self.name} after boot",
            self.plugin_up,
            timeout=300,
            interval=2.0,
        )

    @property
    def domain(self) -> str:
        return f"pyoverlay-{self.name}"  # the Vagrantfile's default_prefix

    def set_link(self, up: bool) -> None:
        """The private NIC (the underlay) down or up; ssh goes over the first NIC."""
        self.run("ip", "link", "set", self.cluster.underlay_nic, "up" if up else "down")


class VmCluster:
    """The Vagrantfile's two VMs: h1 (legacy plugin), h2 (managed plugin)."""

    # software emulation (and other tiers beside it): waits that include VM work stretch
    # this much; they end as soon as what they wait for is there
    slow = float(os.environ.get("PYOVERLAY_VM_SLOW", "6"))
    pyoverlay = PYOVERLAY
    underlay_nic = "eth1"

    def __init__(self, modes: tuple[str, ...] = ("legacy", "managed")) -> None:
        self.ssh_config = ROOT / ".vagrant" / "ssh-config"
        text = vagrant("ssh-config").stdout
        ctl = ROOT / ".vagrant" / "ssh-%h"
        extra = f"  ControlMaster auto\n  ControlPath {ctl}\n  ControlPersist 600\n"
        extra += "  ServerAliveInterval 5\n  LogLevel ERROR\n"
        blocks = [b for b in text.split("\nHost ") if b.strip()]
        self.ssh_config.write_text(
            "".join(("Host " + b.removeprefix("Host ")).rstrip() + "\n" + extra for b in blocks)
        )
        addrs = {"h1": "192.168.56.11", "h2": "192.168.56.12"}
        self.hosts = [
            VmHost(self, i + 1, name, addr, modes[i])
            for i, (name, addr) in enumerate(addrs.items())
        ]
        self.prefix = "vm"

    def host(self, i: int) -> VmHost:
        return self.hosts[i - 1]

    def swarm(self, managers: int = 1) -> None:
        form_swarm(self.hosts, managers)

    def bridge(self) -> str:
        """The host-side bridge of the VMs' private network."""
        out = subprocess.run(
            ["virsh", "-c", "qemu:///system", "net-info", "pyoverlay-vm"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line.split()[1] for line in out.splitlines() if line.startswith("Bridge:"))

    def http_get(self, host: VmHost, port: int, path: str = "/") -> str:
        """An HTTP/1.0 GET from this machine (on the private network) to host:port."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection((host.address, port), timeout=5) as s,
        ):
            s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
        return ""

    def capture_vxlan(self, count: int, timeout: int = 20) -> subprocess.Popen[str]:
        """tcpdump on the private network's bridge: the first `count` VXLAN packets."""
        cmd = ["timeout", str(timeout), "tcpdump", "-lni", self.bridge(), "-c", str(count)]
        proc = subprocess.Popen(
            [*cmd, "udp", "port", "4789"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on ...": capturing from here on
        return proc

    def down(self) -> list[str]:
        """What the tests left that they should not have (the VMs stay: scripts/test-vm)."""
        problems = []
        for h in self.hosts:
            if h.dockerd_pid is None:
                continue
            left = h.docker("ps", "-aq", check=False).stdout.split()
            if left:
                problems.append(f"{h.name}: containers left: {left}")
        return problems
