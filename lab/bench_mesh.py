"""Bench `mesh`: a published port reached through a node that does not run the task vs
straight to the task over the overlay, in one run, the paths' order rotated each round.

A two-node lab swarm (the managed plugin), one service task on h2 published as 7000
(connection setup) and 5301 (iperf3).

    mesh          a client on the underlay (not a node) connects to h1's address, which
                  forwards to h2 (DNAT, masquerade) and h2 to its task
    direct        a container on h1 connects to the task's overlay address (VXLAN)

Inside the IPsec tier's VM (`scripts/test-ipsec-vm --bench-mesh`: a kernel with IPVS
and ESP), the same run adds, same shape, task on h2, client on the underlay through h1:

    docker-mesh   Docker's own routing mesh (ingress network, IPVS) for a service on
                  Docker's `overlay` driver, published as 7100 and 5401
    mesh-esp      pyoverlay's mesh for a service on an `-o encrypted` pyoverlay network
                  (7200, 5501): the hop between the nodes is ESP, checked on the wire
                  before the rounds (ESP seen, none of the service's TCP in the clear)

This machine's kernel has no IPVS, so Docker's mesh is only beside ours in the VM.
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from lab.hosts import IMAGE, LIB_ROOT, Host, Lab, overlay_ip, wait_for
from lab.measure import CONNECT_CLIENT, Way, accept_servers, compare
from lab.registry import Release

SERVICES = {
    # name: (network, published setup port, published iperf port)
    "meshsrv": ("bm", 7000, 5301),
    "dockersrv": ("bdocker", 7100, 5401),
    "esrv": ("benc", 7200, 5501),
}


def step(what: str) -> None:
    """Where the run is (a run in the emulated VM takes many minutes, and shows nothing
    else until its report)."""
    print(f"bench mesh: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def run(report: Callable[..., None], rounds: int = 5, guest: bool = False) -> None:
    lab = Lab("bms" + secrets.token_hex(1), hosts=2)
    slow = lab.slow
    with lab.running(plugin=False):
        h1, h2 = lab.host(1), lab.host(2)
        release = Release(LIB_ROOT / lab.prefix / "release")  # goes with the lab
        for h in lab.hosts:  # as users install it: from a registry
            h.install_plugin("PYOVERLAY_SCOPE=global", remote=release.serve(lab))
            step(f"plugin installed on {h.name}")
        lab.swarm(managers=1)
        step("swarm formed")
        names = ["meshsrv", "dockersrv", "esrv"] if guest else ["meshsrv"]
        try:
            h1.create_swarm_network("bm", "100.14.0.0/24")
            h1.docker("run", "-d", "--name", "probe", "--network", "bm", IMAGE, "sleep", "3600",
                      timeout=300 * slow)  # fmt: skip
            if guest:
                h1.docker("network", "create", "-d", "overlay", "--subnet", "100.16.0.0/24",
                          "bdocker")  # fmt: skip
                h1.docker("network", "create", "-d", h1.driver, "--scope", "swarm",
                          "--subnet", "100.15.0.0/24", "-o", "encrypted", "benc")  # fmt: skip
            tasks = {}
            for name in names:
                net, setup_port, iperf_port = SERVICES[name]
                ports = ("-p", f"{setup_port}:7000", "-p", f"{iperf_port}:5301")
                h1.create_service(name, net, h2, *ports, IMAGE, "sleep", "3600")
            for name in names:
                wait_for(
                    f"{name}'s task on h2",
                    lambda name=name: bool(h2.service_containers(name)),
                    timeout=300 * slow,
                    interval=1,
                )
                tasks[name] = h2.service_containers(name)[0]
                step(f"{name}'s task runs on h2")
            server = {
                n: ["nsenter", f"--net=/proc/{h2.container_pid(t)}/ns/net"]
                for n, t in tasks.items()
            }
            underlay = ["ip", "netns", "exec", lab.underlay_ns]
            ways = [
                Way("mesh", server["meshsrv"], underlay, h1.address),
                Way(
                    "direct",
                    server["meshsrv"],
                    ["nsenter", f"--net=/proc/{h1.container_pid('probe')}/ns/net"],
                    overlay_ip(h2, tasks["meshsrv"], "bm"),
                ),
            ]
            if guest:
                ways.append(
                    Way("docker-mesh", server["dockersrv"], underlay, h1.address, 7100, 5401)
                )
                ways.append(Way("mesh-esp", server["esrv"], underlay, h1.address, 7200, 5501))
            with accept_servers(ways):
                answering = _all_answer(lab, ways, slow)
                esp = _esp_on_the_wire(lab, h1, h2, ways[-1]) if guest else {}
            missing = [w.name for w in ways if w not in answering]
            ways = answering

            step("measuring")
            setup, gbps = compare(ways, rounds, connects=500 if not guest else 200)
            step(f"measured: {setup} {gbps}")  # before any arithmetic on them
            for figures, unit in ((setup, "_us"), (gbps, "_gbps")):
                mesh = figures[f"mesh{unit}"]
                assert isinstance(mesh, float)
                for other in [w.name for w in ways if w.name != "mesh"]:
                    value = figures[f"{other}{unit}"]
                    assert isinstance(value, float)
                    figures[f"mesh_over_{other}"] = round(mesh / value, 3) if value else None
            if missing:
                setup["not_answering"] = missing  # see the explanation printed above
            report("mesh-setup", rounds=rounds, **setup)
            report("mesh-throughput", rounds=rounds, **gbps, **esp)
        finally:
            for name in names:
                h1.docker("service", "rm", name, check=False)
            h1.docker("rm", "-f", "probe", check=False)
            for h in lab.hosts:
                h.docker("swarm", "leave", "--force", check=False, timeout=120)
                h.remove_plugin()


OPTIONAL = ("docker-mesh",)  # Docker's own mesh: reported as not answering, not a failure


def _all_answer(lab: Lab, ways: list[Way], slow: float) -> list[Way]:
    """The paths that answer, before any is measured (the servers run meanwhile); a
    path of ours that does not answer fails the run."""
    out = []
    for way in ways:
        try:
            wait_for(
                f"{way.name} answers",
                lambda way=way: _answers(way),
                timeout=(15 if way.name in OPTIONAL else 40) * slow,
                interval=2,
            )
        except TimeoutError:
            _explain(lab, way)
            if way.name not in OPTIONAL:
                raise
            step(f"{way.name} does not answer: measured without it")
            continue
        step(f"{way.name} answers")
        out.append(way)
    return out


def _answers(way: Way) -> bool:
    return (
        subprocess.run(_probe(way, way.target, 3), capture_output=True, timeout=60).returncode == 0
    )


def _explain(lab: Lab, way: Way) -> None:
    """What a path that does not answer looks like on each node (printed: a run in the
    VM shows nothing else): our mesh table, the nat rules, Docker's ingress sandbox (its
    IPVS table and nat rules), dockerd's log about ingress, and a probe to each node."""
    for h in lab.hosts:
        sbox = ["nsenter", f"--net={h.run_dir / 'exec' / 'netns' / 'ingress_sbox'}"]
        for cmd in (
            ("nft", "list", "table", "ip", "pyoverlay_mesh"),
            ("iptables-save", "-t", "nat"),
            (*sbox, "cat", "/proc/net/ip_vs"),
            (*sbox, "iptables-save"),
            (*sbox, "ip", "-br", "addr"),
            (*sbox, "sysctl", "net.ipv4.ip_forward", "net.ipv4.vs.conntrack"),
            ("cat", "/proc/net/nf_conntrack"),
        ):
            r = h.run(*cmd, check=False)
            step(f"{h.name} $ {' '.join(cmd)}\n{r.stdout[-2500:]}{r.stderr[-300:]}")
        log = (h.lib_dir / "dockerd.log").read_text(errors="replace").splitlines()
        said = [x for x in log if re.search(r"ipvs|ingress|level=(error|warning)", x, re.I)]
        step(f"{h.name} dockerd log (ipvs, ingress, errors):\n" + "\n".join(said[-40:]))
    for h in lab.hosts:  # straight to each node, from the underlay
        r = subprocess.run(_probe(way, h.address, 3), capture_output=True, text=True, timeout=60)
        step(f"{way.name} via {h.name}: rc {r.returncode} {r.stdout[-300:]} {r.stderr[-300:]}")


def _probe(way: Way, target: str, n: int) -> list[str]:
    """`n` connections along `way` to `target`, each attempt bounded (a dropped SYN would
    otherwise retry for two minutes)."""
    return ["timeout", "20", *way.client, sys.executable, "-c", CONNECT_CLIENT, target, str(n),
            str(way.setup_port)]  # fmt: skip


def _esp_on_the_wire(lab: Lab, h1: Host, h2: Host, way: Way) -> dict[str, object]:
    """20 connections through the encrypted service's port while tcpdump watches the
    underlay: ESP between the nodes both ways, none of the service's TCP in the clear."""
    cmd = ["ip", "netns", "exec", lab.underlay_ns, "tcpdump", "-lni", "br-ul", "-U"]
    cmd += [f"host {h1.address} and host {h2.address}"]
    cap = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    said: list[str] = []  # a notice may come first; "listening on": capturing now
    while len(said) < 3 and not any("listening on" in x for x in said):
        said.append(cap.stderr.readline())
    if "listening on" not in said[-1]:
        raise AssertionError(f"tcpdump did not start: {said}")
    try:
        client = [*way.client, sys.executable, "-c", CONNECT_CLIENT, way.target, "20"]
        subprocess.run([*client, str(way.setup_port)], check=True, capture_output=True, timeout=300)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=30)
    lines = out.splitlines()
    esp = [x for x in lines if "ESP(spi=" in x]
    # the service's own TCP in the clear (the published port h1 forwards to; gossip and
    # swarm's TCP between the nodes are other traffic)
    svc = re.compile(rf"\.{way.setup_port}[: ].*Flags \[")
    clear = [x for x in lines if svc.search(x)]
    both = {(h1.address, h2.address), (h2.address, h1.address)}
    seen = {(m[1], m[2]) for x in esp if (m := re.search(r"IP (\S+) > (\S+): ESP", x))}
    if clear or seen != both:
        raise AssertionError(f"the encrypted service's hop is not ESP only: {lines[:20]}")
    return {"mesh_esp_wire": f"{len(esp)} ESP packets between the nodes, 0 in the clear"}


def main() -> int:
    from lab.bench import report

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run(report, args.rounds, guest=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
