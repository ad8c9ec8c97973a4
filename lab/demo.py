"""The README's demo: two Docker hosts on this machine running the seed's application.

    sudo scripts/demo            (= python -m pyoverlay.lab.demo)

Host h1 runs the key-value store ("redis") and the web app ("node"); host h2
runs the front end ("nginx") publishing port 1080.  A request to h2:1080
goes front(h2) -> web(h1) -> kv(h1) and back, across the VXLAN overlay;
the demo prints where everything runs, what pyoverlay built in each host's
kernel, and VXLAN packets captured on the underlay to prove the traffic
crossed hosts.  Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from .hosts import Lab, start_seed_app, wait_for

SUBNET = "100.0.0.0/24"


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(cmd: str, out: str) -> None:
    print(f"$ {cmd}")
    print("\n".join("  " + line for line in out.rstrip().splitlines()), flush=True)


def run(lab: Lab) -> None:
    h1, h2 = lab.hosts
    say("two Docker hosts, each with its own dockerd and pyoverlay plugin, joined by gossip")
    for h in lab.hosts:
        print(f"  {h.name}: underlay {h.address}, docker -H unix://{h.docker_sock}")
    show(
        f"{h1.name}$ pyoverlay members",
        h1.run(lab.pyoverlay, "members", "--state-dir", str(h1.state_dir)).stdout,
    )

    say(
        "on each host: docker network create -d pyoverlay --ipam-driver pyoverlay "
        f"--subnet {SUBNET} net1"
    )
    for h in lab.hosts:
        nid = h.create_network("net1", SUBNET)
        print(f"  {h.name}: network {nid[:12]} -> namespace 1-{nid[:10]}")

    say("the seed's application: kv (redis) and web (node) on h1, front (nginx, -p 1080:80) on h2")
    ips = start_seed_app(h1, h1, h2, "net1")
    kv, web, front = ips["kv"], ips["web"], ips["front"]
    for name, h, ip in (("kv", h1, kv), ("web", h1, web), ("front", h2, front)):
        print(f"  {name:6} runs on {h.name} ({h.address})  net1 address {ip}")

    say("what pyoverlay built on h1 (compare with the seed article)")
    ns = h1.overlay_namespaces()[0]
    show("h1$ ip netns", h1.run("ip", "netns").stdout)
    show(f"h1$ ip netns exec {ns} ip -br link", h1.ns_exec(ns, "ip", "-br", "link").stdout)
    show(
        f"h1$ ip netns exec {ns} ip -d link show type vxlan",
        h1.ns_exec(ns, "ip", "-d", "link", "show", "type", "vxlan").stdout,
    )
    show(
        "h1$ docker exec web ip -o -4 addr",
        h1.docker("exec", "web", "ip", "-o", "-4", "addr").stdout,
    )
    show("h1$ docker exec web ip route", h1.docker("exec", "web", "ip", "route").stdout)

    tap = lab.capture_vxlan(6, timeout=15)

    def fetch() -> str:
        return lab.http_get(h2, 1080, "/cgi-bin/app")

    say("a client on the underlay asks h2:1080 (front on h2 -> web on h1 -> kv on h1)")
    wait_for("the application to answer", lambda: "says hits=" in fetch(), timeout=30)
    for _ in range(2):
        print(f"  {fetch().strip().splitlines()[-1]}")

    say("gossip-fed FDB/ARP entries on h2's VTEP: h1's containers behind 192.168.x.1")
    show(
        "h2$ pyoverlay peers",
        h2.run(lab.pyoverlay, "peers", "--state-dir", str(h2.state_dir), check=False).stdout,
    )
    ns2 = h2.overlay_namespaces()[0]
    show(
        f"h2$ bridge -n {ns2} fdb show | grep dst",
        "\n".join(
            line
            for line in h2.ns_exec(ns2, "bridge", "fdb", "show").stdout.splitlines()
            if " dst " in line
        ),
    )
    show(f"h2$ ip -n {ns2} neigh", h2.ns_exec(ns2, "ip", "neigh").stdout)

    for h in lab.hosts:
        diagram = h.run(
            "env",
            f"DOCKER_HOST=unix://{h.docker_sock}",
            lab.pyoverlay,
            "diagram",
            "--state-dir",
            str(h.state_dir),
            check=False,
        ).stdout
        show(f"{h.name}$ pyoverlay diagram", diagram)

    out, _ = tap.communicate(timeout=20)
    say("VXLAN packets captured on the underlay bridge: the traffic crossed hosts")
    print("\n".join("  " + line for line in out.strip().splitlines()[:6]))
    if "VXLAN" not in out:
        raise SystemExit("demo: no VXLAN packet seen on the underlay")
    print("\ndemo: OK")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    lab = Lab("demo" + secrets.token_hex(1), hosts=2)
    try:
        lab.up()
        run(lab)
    except Exception:
        for h in lab.hosts:
            print(f"--- {h.name} plugin log (tail) ---\n{h.plugin_log()[-2000:]}", file=sys.stderr)
        raise
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
