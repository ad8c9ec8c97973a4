"""Benchmark: encrypted vs plain pyoverlay, beside Docker's own encrypted overlay.

Needs a kernel with ESP: scripts/test-ipsec-vm --bench runs it inside the
virtme-ng VM (software emulation, so absolute numbers are tiny; the ratios,
measured alternately in one run on the same two lab hosts, are the result).

    pyoverlay plain         VXLAN, guard table with admission on
    pyoverlay encrypted     VXLAN in ESP (AES-GCM, transport)
    docker encrypted        Docker's overlay --opt encrypted on a 2-node swarm
    pyoverlay plain, admission off   (the plugins restarted with --vxlan-admission off)
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys

from .bench import in_container, report
from .hosts import IMAGE, Host, Lab, wait_for
from .measure import iperf_gbps

NETS = {
    "pyoverlay-plain": ("100.20.0.0/24", ()),
    "pyoverlay-encrypted": ("100.21.0.0/24", ("-o", "encrypted")),
}


def gbps(h1: Host, h2: Host, net: str, seconds: int) -> float:
    target = h1.docker(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', f"s-{net}"
    ).stdout.strip()
    return iperf_gbps(
        in_container(h1, f"s-{net}"), in_container(h2, f"c-{net}"), target, 5201, seconds
    )


def start(h: Host, name: str, net: str, tries: int = 4) -> bool:
    """`docker run` on `net`; an attachable swarm network may time out the first attach
    under emulation (the manager allocates slowly), so try again."""
    for _ in range(tries):
        r = h.docker("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "3600",
                     check=False, timeout=300)  # fmt: skip
        if r.returncode == 0:
            return True
        h.docker("rm", "-f", name, check=False)
    return False


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
        names = {"docker-encrypted": "denc"}
        h1.docker(
            "network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted",
            "--subnet", "100.22.0.0/24", "denc",
        )  # fmt: skip
        for key, (subnet, opts) in NETS.items():
            names[key] = key
            for h in (h1, h2):
                h.docker(
                    "network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay",
                    "--subnet", subnet, *opts, key,
                )  # fmt: skip
        for key, net in list(names.items()):
            if not (start(h1, f"s-{net}", net) and start(h2, f"c-{net}", net)):
                print(f"{key}: no container could attach; left out", file=sys.stderr)
                del names[key]
        for key, net in names.items():  # warm up: first packets, SAs, ARP
            wait_for(f"{key} up", lambda net=net: gbps(h1, h2, net, 1) > 0, timeout=120)
        for _ in range(args.runs):  # alternate, so drift hits all alike
            for key, net in names.items():
                results.setdefault(key, []).append(gbps(h1, h2, net, args.seconds))
        for h in (h1, h2):  # admission off: the plain network again
            h.stop_plugin()
            h.start_plugin(*lab.default_plugin_args(h), "--vxlan-admission", "off")
        net = names["pyoverlay-plain"]
        wait_for("plain up again", lambda: gbps(h1, h2, net, 1) > 0, timeout=120)
        for _ in range(args.runs):
            results.setdefault("pyoverlay-plain-no-admission", []).append(
                gbps(h1, h2, net, args.seconds)
            )
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
        )
        if "docker-encrypted" in med
        else None,
        admission_on_over_off=round(
            med["pyoverlay-plain"] / med["pyoverlay-plain-no-admission"], 3
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
