"""Bench `mesh`: a published port reached through a node that does not run the task vs
straight to the task over the overlay, in one run, alternating rounds.

A two-node lab swarm (the managed plugin), one service task on h2 published as
7000 (connection setup) and 5301 (iperf3).  Through the mesh: a client on the
underlay (not a node) connects to h1's address, which forwards to h2 (DNAT,
masquerade) and h2 to its task.  Direct: a container on h1 connects to the
task's overlay address (VXLAN).  Docker's own IPVS mesh cannot run on this
kernel (no IPVS), so it is not beside it here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from lab.hosts import IMAGE, Host, Lab, overlay_ip, wait_for
from lab.measure import side_by_side


def run(report: Callable[..., None], rounds: int = 5) -> None:
    lab = Lab("bms" + secrets.token_hex(1), hosts=2)
    with lab.running(plugin=False):
        h1, h2 = lab.host(1), lab.host(2)
        for h in lab.hosts:
            h.install_plugin("PYOVERLAY_SCOPE=global")
        lab.swarm(managers=1)
        try:
            h1.create_swarm_network("bm", "100.14.0.0/24")
            h1.docker("run", "-d", "--name", "probe", "--network", "bm", IMAGE, "sleep", "3600")
            ports = ("-p", "7000:7000", "-p", "5301:5301")
            h1.create_service("meshsrv", "bm", h2, *ports, IMAGE, "sleep", "3600")
            task: list[str] = []

            def started() -> bool:
                task[:] = h2.service_containers("meshsrv")
                return bool(task)

            wait_for("meshsrv's task", started, timeout=120, interval=0.5)

            def table(h: Host) -> str:
                r = h.run("nft", "list", "table", "ip", "pyoverlay_mesh", check=False)
                return r.stdout

            wait_for(
                "h1 forwards both ports to h2, h2 delivers them to its task",
                lambda: all(
                    "to-tcp-7000-0" in table(h) and "to-tcp-5301-0" in table(h) for h in lab.hosts
                ),
                timeout=120,
                interval=0.5,
            )
            server = ["nsenter", f"--net=/proc/{h2.container_pid(task[0])}/ns/net"]
            direct_client = ["nsenter", f"--net=/proc/{h1.container_pid('probe')}/ns/net"]
            mesh_client = ["ip", "netns", "exec", lab.underlay_ns]
            task_ip = overlay_ip(h2, task[0], "bm")
            setup, gbps = side_by_side(
                server,
                ("mesh", (mesh_client, h1.address)),
                ("direct", (direct_client, task_ip)),
                rounds,
            )
            report("mesh-setup", **setup)
            report("mesh-throughput", **gbps)
        finally:
            h1.docker("service", "rm", "meshsrv", check=False)
            h1.docker("rm", "-f", "probe", check=False)
            for h in lab.hosts:
                h.docker("swarm", "leave", "--force", check=False, timeout=120)
                h.remove_plugin()
