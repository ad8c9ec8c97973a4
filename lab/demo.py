"""The README's demo: two Docker hosts on this machine running the seed's application.

    sudo scripts/demo            (= python -m lab.demo)
    sudo scripts/demo --swarm    the same application as swarm services (three hosts)

Host h1 runs the key-value store ("redis") and the web app ("node"); host h2
runs the front end ("nginx") publishing port 1080.  A request to h2:1080
goes front(h2) -> web(h1) -> kv(h1) and back, across the VXLAN overlay;
the demo prints where everything runs, what pyoverlay built in each host's
kernel, and VXLAN packets captured on the underlay to prove the traffic
crossed hosts.  Everything is removed at the end.

With --swarm: three hosts form a Docker swarm (h1 manager, h2 and h3
workers), pyoverlay runs on each as the managed plugin in global scope,
the network is created once on the manager (`--scope swarm`), and the three
tiers are `docker service create`s, found by name through Docker's DNS.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from lab.hosts import IMAGE, PLUGIN, Host, Lab, start_seed_app, wait_for

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
        show(f"{h.name}$ pyoverlay diagram", diagram_of(lab, h))

    out, _ = tap.communicate(timeout=20)
    say("VXLAN packets captured on the underlay bridge: the traffic crossed hosts")
    print("\n".join("  " + line for line in out.strip().splitlines()[:6]))
    if "VXLAN" not in out:
        raise SystemExit("demo: no VXLAN packet seen on the underlay")
    print("\ndemo: OK")


def run_swarm(lab: Lab) -> None:
    h1, h2, h3 = lab.hosts
    say(
        "three Docker hosts; on each: scripts/build-plugin, docker plugin set "
        "PYOVERLAY_SCOPE=global PYOVERLAY_GOSSIP_KEY_FILE=gossip.key, docker plugin enable"
    )
    for h in lab.hosts:
        h.install_plugin("PYOVERLAY_SCOPE=global")
        print(f"  {h.name}: underlay {h.address}, pyoverlay:latest enabled")
    say("docker swarm init on h1; h2 and h3 join as workers (no pyoverlay --join needed)")
    lab.swarm(managers=1)
    show("h1$ docker node ls", h1.docker("node", "ls").stdout)
    say(f"h1$ docker network create -d {PLUGIN} --scope swarm --attachable --subnet {SUBNET} net1")
    h1.create_swarm_network("net1", SUBNET)
    placed = (
        ("kv", h1, ("/app/kv-server",)),
        ("web", h2, ("/app/web-server", "kv")),
        ("front", h3, ("/app/front-server", "web")),
    )
    for name, h, cmd in placed:
        extra = ["--publish", "mode=host,target=80,published=1080"] if name == "front" else []
        say(
            f"docker service create --name {name} --network net1 {' '.join(extra)} "
            f"(on {h.name}; a VIP, balanced by pyoverlay's nftables rules)"
        )
        h1.create_service(name, "net1", h, *extra, IMAGE, *cmd)
    for name, h, _ in placed:
        wait_for(
            f"{name}'s task on {h.name}",
            lambda h=h, n=name: bool(h.service_containers(n)),
            timeout=120,
            interval=0.5,
        )
    show("h1$ docker service ls", h1.docker("service", "ls").stdout)
    say("a client on the underlay asks h3:1080 (front on h3 -> web on h2 -> kv on h1, by name)")
    wait_for(
        "the application",
        lambda: "says hits=" in lab.http_get(h3, 1080, "/cgi-bin/app"),
        timeout=60,
    )
    for _ in range(2):
        print(f"  {lab.http_get(h3, 1080, '/cgi-bin/app').strip().splitlines()[-1]}")
    show(
        "h1$ docker network inspect net1 (Scope, Driver, IPAM)",
        h1.docker(
            "network",
            "inspect",
            "-f",
            "scope={{.Scope}} driver={{.Driver}} subnet={{(index .IPAM.Config 0).Subnet}}",
            "net1",
        ).stdout,
    )
    show("h2$ pyoverlay diagram", diagram_of(lab, h2))
    front = h3.service_containers("front")[0]
    show(
        f"h3$ nft list table ip pyoverlay   (in {front}'s namespace)",
        h3.in_container_netns(front, "nft", "list", "table", "ip", "pyoverlay").stdout,
    )
    for h in lab.hosts:
        h.docker("swarm", "leave", "--force", check=False, timeout=120)
        h.remove_plugin()
    print("\ndemo: OK")


def diagram_of(lab: Lab, h: Host) -> str:
    return h.run(
        "env",
        f"DOCKER_HOST=unix://{h.docker_sock}",
        lab.pyoverlay,
        "diagram",
        "--state-dir",
        str(h.state_dir),
        check=False,
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--swarm", action="store_true", help="the seed's scenario as swarm services"
    )
    args = parser.parse_args()
    lab = Lab("demo" + secrets.token_hex(1), hosts=3 if args.swarm else 2)
    try:
        lab.up(plugin=not args.swarm)
        run_swarm(lab) if args.swarm else run(lab)
    except Exception:
        for h in lab.hosts:
            print(f"--- {h.name} plugin log (tail) ---\n{h.plugin_log()[-2000:]}", file=sys.stderr)
        raise
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
