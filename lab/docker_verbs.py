"""Docker CLI verbs a test host offers on top of `docker(...)`, the same for namespace
hosts (hosts.Host) and VMs (vms.VmHost)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Protocol

PLUGIN = "pyoverlay:latest"  # the managed plugin's full name


class SwarmHost(Protocol):
    @property
    def address(self) -> str: ...

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


class DockerVerbs:
    driver: str  # the name Docker knows pyoverlay by here: pyoverlay, or PLUGIN (managed)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def container_pid(self, container: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())

    def create_network(self, name: str, subnet: str, *extra: str, driver: str = "") -> str:
        """`docker network create` with pyoverlay as driver and IPAM (default: the name
        this host's Docker knows it by); returns the network ID."""
        driver = driver or self.driver
        return self._network_create(
            driver, "--ipam-driver", driver, "--subnet", subnet, *extra, name
        )

    def create_swarm_network(self, name: str, subnet: str, driver: str = "") -> str:
        """`docker network create --scope swarm --attachable` on this manager (default
        driver: the name this host knows pyoverlay by); its ID."""
        opts = ("--scope", "swarm", "--attachable", "--subnet", subnet)
        return self._network_create(driver or self.driver, *opts, name)

    def _network_create(self, driver: str, *args: str) -> str:
        return self.docker("network", "create", "-d", driver, *args).stdout.strip()

    def create_service(
        self, name: str, network: str, on: DockerVerbs | None, *args: str, mode: str = "vip"
    ) -> None:
        """`docker service create` on this manager: a task on host `on` (None: anywhere),
        in endpoint mode `mode` (vip, Docker's default, or dnsrr); no registry here, so
        no image digest lookup."""
        where = ["--constraint", f"node.id=={on.node_id}"] if on is not None else []
        self.docker(
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
            "--network",
            network,
            "--endpoint-mode",
            mode,
            *where,
            *args,
            timeout=120,
        )

    def service_vip(self, service: str, network_id: str) -> str:
        """The VIP swarm gave `service` on a network (ask a manager)."""
        fmt = "{{json .Endpoint.VirtualIPs}}"
        for v in json.loads(self.docker("service", "inspect", "-f", fmt, service).stdout):
            if v["NetworkID"] == network_id:
                return str(v["Addr"]).split("/")[0]
        raise LookupError(f"service {service} has no VIP on network {network_id}")

    @property
    def node_id(self) -> str:
        """This host's swarm node ID."""
        return self.docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()

    def service_containers(self, service: str) -> list[str]:
        """Names of this host's running containers of a swarm service."""
        out = self.docker(
            "ps", "-f", f"label=com.docker.swarm.service.name={service}", "--format", "{{.Names}}"
        ).stdout
        return out.split()


def form_swarm(hosts: Sequence[SwarmHost], managers: int = 1) -> None:
    """A Docker swarm of `hosts`: the first initialises it, the next `managers - 1`
    join as managers, the rest as workers (control plane and swarm's own data
    path on the underlay)."""
    h1 = hosts[0]
    h1.docker("swarm", "init", "--advertise-addr", h1.address, timeout=120)
    token = {
        role: h1.docker("swarm", "join-token", "-q", role).stdout.strip()
        for role in ("manager", "worker")
    }
    for i, h in enumerate(hosts[1:], start=2):
        role = "manager" if i <= managers else "worker"
        h.docker(
            "swarm",
            "join",
            "--token",
            token[role],
            "--advertise-addr",
            h.address,
            f"{h1.address}:2377",
            timeout=120,
        )
