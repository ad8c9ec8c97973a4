"""The inspection commands: each asks the running plugin over its admin socket and words
the answer (status and peers fall back to the state files and the kernel when the
plugin is down)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from pyoverlay.cli.describe import describe_entry
from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.ip import addr_key
from pyoverlay.core.store import JsonDocument
from pyoverlay.plugin import settings as plugin_settings
from pyoverlay.plugin.admin import ADMIN_SOCKET, MEMBERS_FILE
from pyoverlay.plugin.views import network_summary


class PluginDown(PyoverlayError):
    pass


async def _admin(state_dir: Path, method: str, path: str) -> Any:
    sock = state_dir / ADMIN_SOCKET
    if not sock.exists():
        raise PluginDown(
            f"no running plugin: {sock} does not exist "
            "(start `pyoverlay plugin`, or pass the --state-dir it was given)"
        )
    conn = aiohttp.UnixConnector(path=str(sock))
    try:
        async with aiohttp.ClientSession(connector=conn) as session:
            async with session.request(method, f"http://pyoverlay{path}") as resp:
                return await resp.json()
    except aiohttp.ClientError as exc:
        raise PluginDown(f"the plugin does not answer on {sock}: {exc}") from exc


def admin(state_dir: Path, method: str, path: str) -> Any:
    return asyncio.run(_admin(state_dir, method, path))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)) for r in [header, *rows])


def cmd_status(state_dir: Path, as_json: bool) -> int:
    try:
        st = admin(state_dir, "GET", "/status")
    except PluginDown as exc:
        print(f"plugin: DOWN ({exc}); showing the state files", file=sys.stderr)
        return _offline_status(state_dir, as_json)
    if as_json:
        print(json.dumps(st, indent=1))
        return 0
    members = ", ".join(f"{n} {s}" for s, n in sorted(st["members"].items()))
    print(f"plugin:   {st['health']} (pyoverlay {st['version']})")
    print(f"node:     {st['node']}  vtep {st['vtep']}  gossip {st['gossip'] or 'off'}")
    print(f"members:  {members}")
    for name in st.get("data_path_kept") or ():
        print(f"          {name}: plugin down, host up: its containers' entries kept")
    if not st.get("synced", True):
        print(
            "sync:     waiting for a first full exchange with a live host "
            "(no pruning, no new address blocks until then)"
        )
    for what, why in (st.get("swarm_refused") or {}).items():
        name = what if what.startswith("pool ") else f"network {what[:12]}"
        print(f"! swarm {name} refused on this leader (Docker shows no error: the")
        print(f"  network is listed but never allocated, its tasks stay New): {why}")
    for nid, hosts in (st.get("disagreements") or {}).items():
        for host, diffs in hosts.items():
            print(f"! network {nid}: host {host} disagrees: {'; '.join(diffs)}")
    rows = [
        [
            n["network"],
            n["vni"],
            " ".join(str(n[k]) for k in ("subnet", "subnet6") if n.get(k)),  # dual stack: both
            n["mtu"],
            "ipsec" if n.get("encrypted") else "-",
            n["namespace"] or NO_SANDBOX,
            n["endpoints"],
        ]
        for n in st["networks"]
    ]
    print(_table(rows, ["NETWORK", "VNI", "SUBNET", "MTU", "ENCRYPTED", "NAMESPACE", "ENDPOINTS"]))
    _print_ipsec(st.get("ipsec"))
    return 0


def _print_ipsec(sec: dict[str, Any] | None) -> None:
    if not sec:
        return
    drops = sec.get("drops") or {}
    print(
        f"guard:    VXLAN admission {'on' if sec['admission'] else 'off'} "
        f"({len(sec['admitted'])} member VTEPs), dropped: {drops.get('admission_drops', 0)} "
        f"from non-members, {drops.get('plain_drops', 0)} unencrypted on encrypted networks"
    )
    if not sec["available"]:
        print(f"ipsec:    unavailable: {sec['why_not']}")
        return
    for e in sec.get("errors") or []:
        print(f"! ipsec: {e}")
    if "installed_sas" in sec:
        print(f"ipsec:    {sec['installed_sas']} SAs in the kernel (at the last read)")
    rows = []
    for peer, s in sorted((sec.get("sending") or {}).items()):
        r = (sec.get("receiving") or {}).get(peer, {})
        active = ", ".join(f"n{a['n']} {a['spi']}" for a in r.get("active", [])) or "-"
        rows.append(
            [peer, f"n{s['n']}", s["spi"], s["key"], s["packets"], active, r.get("installed", 0)]
        )
    if rows:
        print(
            _table(
                rows,
                ["PEER", "SEND", "SPI OUT", "KEY", "PACKETS OUT", "RECEIVING (n spi)", "SAS IN"],
            )
        )


NO_SANDBOX = "- (no local endpoint)"


def _offline_status(state_dir: Path, as_json: bool) -> int:
    driver = JsonDocument(state_dir / "driver.json").load()
    nets = driver.get("networks") or {}
    eps = driver.get("endpoints") or {}
    if as_json:
        print(json.dumps({"health": "down", "networks": nets, "endpoints": eps}, indent=1))
        return 0
    counts = {nid: sum(1 for e in eps.values() if e["network_id"] == nid) for nid in nets}
    rows = [
        [
            nid[:12],
            n["vni"],
            " ".join(str(n[k]) for k in ("subnet", "subnet6") if n.get(k)),
            n["mtu"],
            f"1-{nid[:10]}" if counts[nid] else NO_SANDBOX,  # or eager: not in the state file
            counts[nid],
        ]
        for nid, n in sorted(nets.items())
    ]
    print(_table(rows, ["NETWORK", "VNI", "SUBNET", "MTU", "NAMESPACE", "ENDPOINTS"]))
    return 0


def cmd_members(state_dir: Path, as_json: bool) -> int:
    try:
        members = admin(state_dir, "GET", "/members")
    except PluginDown as exc:
        last = JsonDocument(state_dir / MEMBERS_FILE).load()
        if not last:
            raise
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last["at"])))
        print(f"plugin: DOWN ({exc}); last known members, as of {when}", file=sys.stderr)
        members = last["members"]
    if as_json:
        print(json.dumps(members, indent=1))
        return 0
    rows = [
        [
            m["name"] + (" (self)" if m["self"] else ""),
            m["status"] + (" (plugin down, data path kept)" if m.get("data_path_kept") else ""),
            m["addr"],
            m["vtep"],
            m["incarnation"],
        ]
        for m in members
    ]
    print(_table(rows, ["NODE", "STATE", "GOSSIP", "VTEP", "INCARNATION"]))
    return 0


async def _offline_peers(state_dir: Path, network: str) -> list[dict[str, Any]]:
    """The plugin is down: only what the kernel holds (the table lives in the plugin)."""
    from pyoverlay.driver.core.model import NetworkSpec
    from pyoverlay.plugin.wiring import make_kernel

    nets = (JsonDocument(state_dir / "driver.json").load().get("networks") or {}).values()
    kernel = make_kernel()
    views = []
    try:
        for raw in nets:
            net = NetworkSpec.from_json(raw)
            if not net.network_id.startswith(network):
                continue
            try:
                have = await kernel.peer_entries(net.namespace, net.vxlan)
            except PyoverlayError:  # no sandbox (no local endpoint)
                views.append({**network_summary(net), "namespace": None, "kernel_only": []})
                continue
            stale = [{"kind": "fdb", "mac": m, "dst": str(d)} for m, d in sorted(have.fdb.items())]
            stale += [
                {"kind": "neigh", "ip": str(i), "mac": m}
                for i, m in sorted(have.neigh.items(), key=lambda kv: addr_key(kv[0]))
            ]
            views.append({**network_summary(net), "peers": [], "kernel_only": stale})
    finally:
        await kernel.close()
    return views


def cmd_peers(state_dir: Path, network: str, as_json: bool) -> int:
    try:
        views = admin(state_dir, "GET", f"/peers?network={network}")
    except PluginDown as exc:
        print(f"plugin: DOWN ({exc}); showing only what the kernel holds", file=sys.stderr)
        views = asyncio.run(_offline_peers(state_dir, network))
        if as_json:
            print(json.dumps(views, indent=1))
            return 0
        for v in views:
            ns = v["namespace"] or NO_SANDBOX
            print(f"network {v['network']}  vni {v['vni']}  ns {ns}  dev {v['vxlan']}")
            for e in v["kernel_only"]:
                print(f"  {describe_entry(e)}")
        return 0
    if as_json:
        print(json.dumps(views, indent=1))
        return 0
    bad = 0
    for v in views:
        print(
            f"network {v['network']}  vni {v['vni']}  subnet {v['subnet']}  "
            f"ns {v['namespace'] or NO_SANDBOX}  vtep dev {v['vxlan']}"
        )
        if v["namespace"] is None:
            print("  no sandbox on this host: its endpoints are received only while a local")
            print("  container is on the network (--network-setup eager changes that)\n")
            continue
        if any("ip6" in p for p in v["peers"]):  # a dual-stack network
            rows = [
                [p["endpoint"], p["ip"], p.get("ip6", "-"), p["mac"], p["vtep"], p["state"]]
                for p in v["peers"]
            ]
            print(_table(rows, ["ENDPOINT", "IP", "IPV6", "MAC", "VTEP", "KERNEL"]))
        else:
            rows = [[p["endpoint"], p["ip"], p["mac"], p["vtep"], p["state"]] for p in v["peers"]]
            print(_table(rows, ["ENDPOINT", "IP", "MAC", "VTEP", "KERNEL"]))
        for s in v["stale"]:
            print(f"  ! stale {describe_entry(s)} (no row in the table)")
        for s in v.get("kept") or ():
            print(f"    kept  {describe_entry(s)} (its host's plugin is down, the host is up)")
        bad += len(v["stale"]) + sum(p["state"] in ("missing",) for p in v["peers"])
        print()
    if bad:
        print(f"{bad} disagreement(s); `pyoverlay reconcile` repairs them")
    return 1 if bad else 0


def cmd_services(state_dir: Path, network: str, as_json: bool) -> int:
    views = admin(state_dir, "GET", f"/services?network={network}")
    if as_json:
        print(json.dumps(views, indent=1))
        return 0
    bad = 0
    for v in views:
        print(f"network {v['network']}  vni {v['vni']}  subnet {v['subnet']}")
        rows = [
            [s["service"], s["vip"], " ".join(f"{b['ip']}@{b['host']}" for b in s["backends"])]
            for s in v["services"]
        ]
        print(_table(rows, ["SERVICE", "VIP", "TASKS (ip@host)"]) if rows else "  no VIP service")
        for c in v["containers"]:
            marks = [f"{vip} {st}" for vip, st in sorted(c["vips"].items())]
            broken = [m for m in marks if not m.endswith(" ok")]
            if c["error"] or not c["intact"]:
                broken.append(c["error"] or "table not as pyoverlay makes it")
            bad += len(broken)
            shown = "; ".join(broken) if broken else f"{len(marks)} VIP(s) ok"
            print(f"  container ns {Path(c['sandbox']).name}: {'! ' if broken else ''}{shown}")
        docker = v.get("docker")
        if isinstance(docker, str):
            print(f"  dockerd: {docker}")
        elif docker:
            bad += len(docker)
            for d in docker:
                print(f"  ! {d}")
        print()
    bad += print_mesh(admin(state_dir, "GET", "/mesh"))
    if bad:
        print(f"{bad} disagreement(s); `pyoverlay reconcile` repairs the rules")
    return 1 if bad else 0


def print_mesh(mesh: dict[str, Any]) -> int:
    """The routing mesh on this node: each published port and where it goes; problems."""
    if mesh.get("off"):
        return 0
    rows = [
        [
            p["port"],
            p["service"],
            str(p["target"]),
            " ".join(p["local"]) or "-",
            (" ".join(p["via"]) or "-") + (" (ESP)" if p.get("encrypted") and p["via"] else ""),
        ]
        for p in mesh["ports"]
    ]
    print("published ports on this node (routing mesh, table ip pyoverlay_mesh)")
    header = ["PORT", "SERVICE", "TARGET", "LOCAL TASKS", "VIA HOSTS"]
    print(_table(rows, header) if rows else "  none")
    problems = list(mesh["conflicts"]) + ([mesh["error"]] if mesh["error"] else [])
    if rows and mesh["docker_user"] == "missing":
        problems.append(
            "no DOCKER-USER chain in nftables: forwarded connections depend on FORWARD's policy"
        )
    for p in problems:
        print(f"  ! {p}")
    return len(problems)


def cmd_reconcile(state_dir: Path, dry_run: bool, as_json: bool) -> int:
    res = admin(state_dir, "POST", f"/reconcile?dry_run={'1' if dry_run else '0'}")
    if as_json:
        print(json.dumps(res, indent=1))
        return 0
    verb = "would change" if dry_run else "changed"
    print(f"reconcile {verb} {len(res['ops'])} thing(s)")
    for op in res["ops"]:
        print(f"  {op}")
    for err in res["errors"]:
        print(f"  error: {err}")
    return 1 if res["errors"] else 0


def cmd_diagram(state_dir: Path, network: str, as_json: bool) -> int:
    from pyoverlay.cli.diagram import docker_view, draw

    status = admin(state_dir, "GET", "/status")
    views = admin(state_dir, "GET", f"/peers?network={network}")
    vips = {v["network"]: v["services"] for v in admin(state_dir, "GET", "/services")}
    for view in views:
        view["services"] = vips.get(view["network"], [])
    if as_json:
        print(json.dumps({"status": status, "networks": views}, indent=1))
        return 0
    if not views:
        print("no pyoverlay network on this host" + (f" matching {network!r}" if network else ""))
        return 1
    for view in views:
        names, gw_subnet = docker_view(view["network"])
        print(draw(status, view, names, gw_subnet))
        print()
    return 0


def cmd_options() -> int:
    print("| option | env | default | meaning |")
    print("|---|---|---|---|")
    for s in plugin_settings.SETTINGS:
        print(f"| `{s.flag}` | `{s.env}` | `{s.default_text}` | {s.help} |")
    return 0
