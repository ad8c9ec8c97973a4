"""Benchmark: encrypted vs plain pyoverlay, beside Docker's own encrypted overlay.

Needs a kernel with ESP: scripts/test-ipsec-vm --bench runs it inside the
virtme-ng VM (software emulation, so absolute numbers are tiny; the ratios,
measured alternately in one run on the same two lab hosts, are the result).

    pyoverlay plain         VXLAN, guard table with admission on
    pyoverlay encrypted     VXLAN in ESP (AES-GCM, transport)
    docker encrypted        Docker's overlay --opt encrypted on a 2-node swarm, between two
                            service tasks (one per host; `docker run` on an attachable swarm
                            network gives up after 20 s, too short under emulation)

Admission on vs off is measured on this machine's own kernel (no ESP needed), alternated:
`scripts/bench --only admission`.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys

from lab.bench import in_container, report
from lab.hosts import IMAGE, Host, Lab, wait_for
from lab.measure import iperf_gbps

NETS = {
    "pyoverlay-plain": ("100.20.0.0/24", ()),
    "pyoverlay-encrypted": ("100.21.0.0/24", ("-o", "encrypted")),
}


def gbps(h1: Host, server: str, h2: Host, client: str, net: str, seconds: int) -> float:
    target = h1.docker(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', server
    ).stdout.strip()
    return iperf_gbps(in_container(h1, server), in_container(h2, client), target, 5201, seconds)


def task_on(h: Host, service: str) -> str:
    """The name of `service`'s running container on h, once the swarm has started it
    (a service task has no 20 s attach deadline)."""
    wait_for(
        f"a task of {service} running on {h.name}",
        lambda: bool(h.service_containers(service)),
        timeout=600,
        interval=2.0,
    )
    return h.service_containers(service)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    lab = Lab("bip" + secrets.token_hex(1), hosts=2)
    results: dict[str, list[float]] = {}
    with lab.running():
        h1, h2 = lab.host(1), lab.host(2)
        lab.swarm(managers=1)
        h1.docker(
            "network", "create", "-d", "overlay", "--opt", "encrypted",
            "--subnet", "100.22.0.0/24", "denc",
        )  # fmt: skip
        pairs: dict[str, tuple[str, str, str]] = {}  # measure -> (network, server, client)
        for side, h in (("s", h1), ("c", h2)):
            h1.create_service(f"{side}-denc", "denc", h, IMAGE, "sleep", "3600", mode="dnsrr")
        for key, (subnet, opts) in NETS.items():
            for h in (h1, h2):
                h.docker(
                    "network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay",
                    "--subnet", subnet, *opts, key,
                )  # fmt: skip
            for side, h in (("s", h1), ("c", h2)):
                h.docker("run", "-d", "--name", f"{side}-{key}", "--network", key, IMAGE,
                         "sleep", "3600", timeout=300)  # fmt: skip
            pairs[key] = (key, f"s-{key}", f"c-{key}")
        pairs["docker-encrypted"] = ("denc", task_on(h1, "s-denc"), task_on(h2, "c-denc"))
        for key, (net, srv, cli) in pairs.items():  # warm up: first packets, SAs, ARP
            wait_for(
                f"{key} up",
                lambda net=net, srv=srv, cli=cli: gbps(h1, srv, h2, cli, net, 1) > 0,
                timeout=180,
            )
        for _ in range(args.runs):  # alternate, so drift hits all alike
            for key, (net, srv, cli) in pairs.items():
                results.setdefault(key, []).append(gbps(h1, srv, h2, cli, net, args.seconds))
        for side in ("s", "c"):
            h1.docker("service", "rm", f"{side}-denc", check=False)
        for h in lab.hosts:
            h.docker("swarm", "leave", "--force", check=False, timeout=120)
    med = {k: statistics.median(v) for k, v in results.items()}
    report(
        "ipsec-throughput",
        runs=args.runs,
        seconds=args.seconds,
        **{f"{k}_gbps": round(v, 4) for k, v in med.items()},
        encrypted_over_plain=round(med["pyoverlay-encrypted"] / med["pyoverlay-plain"], 3),
        encrypted_over_docker_encrypted=round(
            med["pyoverlay-encrypted"] / med["docker-encrypted"], 3
        ),
        runs_each={k: [round(x, 4) for x in v] for k, v in results.items()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
