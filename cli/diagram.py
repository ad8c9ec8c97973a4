"""`pyoverlay diagram`: one host's data path drawn the way the seed article draws it.

Data comes from the plugin (networks, local and remote endpoints, VTEPs) and,
when the docker CLI can reach the daemon, from `docker network inspect`
(container names, and their docker_gwbridge legs).  Without Docker, endpoints
are labelled by their endpoint IDs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from pyoverlay.cli.describe import describe_entry

COL = 20
LABEL = 10  # what fits in a container's box


def _docker(*args: str) -> Any:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        r = subprocess.run([docker, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return None


def docker_view(network: str) -> tuple[dict[str, tuple[str, str]], str]:
    """endpoint id prefix -> (container name, gwbridge address); and the gwbridge subnet."""
    by_ep: dict[str, tuple[str, str]] = {}
    net = _docker("network", "inspect", network)
    gw = _docker("network", "inspect", "docker_gwbridge")
    gw_by_cid: dict[str, str] = {}
    gw_subnet = ""
    if gw:
        for cid, c in (gw[0].get("Containers") or {}).items():
            gw_by_cid[cid] = str(c.get("IPv4Address", "")).split("/")[0]
        cfg = (gw[0].get("IPAM") or {}).get("Config") or [{}]
        gw_subnet = cfg[0].get("Gateway", "") + (
            "/" + cfg[0].get("Subnet", "").split("/")[-1] if cfg[0].get("Subnet") else ""
        )
    if net:
        for cid, c in (net[0].get("Containers") or {}).items():
            by_ep[str(c.get("EndpointID", ""))[:12]] = (
                str(c.get("Name", cid[:12])),
                gw_by_cid.get(cid, ""),
            )
    return by_ep, gw_subnet


def _wire(view: dict[str, Any], sec: dict[str, Any], vtep: str) -> str:
    """How this network's VXLAN to `vtep` travels: plain, or inside ESP (which SA)."""
    if not view.get("encrypted"):
        return "udp/4789"
    out = (sec.get("sending") or {}).get(vtep)
    if out is None:
        return "udp/4789 in ESP: NO SA yet (dropped, never plain)"
    return f"udp/4789 in ESP spi {out['spi']} n{out['n']}"


def _row(cells: list[str]) -> str:
    return "".join(f"{c:<{COL}}" for c in cells).rstrip()


def draw(
    status: dict[str, Any], view: dict[str, Any], names: dict[str, tuple[str, str]], gw_subnet: str
) -> str:
    title = f"host {status['vtep']} (pyoverlay node {status['node']})"
    if view["namespace"] is None:
        return "\n".join(
            [
                title,
                f"  network {view['network']} vni {view['vni']} subnet {view['subnet']}:",
                "  no local container, so no netns, br0 or VTEP here (made at the first one;",
                "  --network-setup eager makes them at `network create`)",
            ]
        )
    local = [p for p in view["peers"] if p["state"] == "local"]
    remote = [p for p in view["peers"] if p["state"] != "local"]
    out: list[str] = []
    width = max(COL * max(1, len(local)) + 2, 60)
    out.append(title.center(width))
    out.append("")
    labels = []
    eth1 = []
    for p in local:
        name, gw_ip = names.get(p["endpoint"], (p["endpoint"], ""))
        labels.append(name[:LABEL])  # swarm task names are long: web.1.<task id>
        eth1.append(gw_ip)
    n = max(1, len(local))
    bar = " +" + ("----+" + "-" * (COL - 5)) * n + "-+ "
    if any(eth1):
        out.append(_row(["  " + (ip or "-") for ip in eth1]))
        out.append(bar + f"docker_gwbridge {gw_subnet}".rstrip())
        out.append(_row(["      |eth1"] + ["     |eth1"] * (n - 1)))
    out.append(_row(["  +---+-------+"] + [" +---+-------+"] * (n - 1)) if local else "")
    out.append(
        _row(
            [
                f"  | {lab:<{LABEL}}|" if i == 0 else f" | {lab:<{LABEL}}|"
                for i, lab in enumerate(labels)
            ]
        )
        if local
        else "  (no local containers)"
    )
    out.append(_row(["  +---+-------+"] + [" +---+-------+"] * (n - 1)) if local else "")
    if local:
        out.append(_row(["      |eth0"] + ["     |eth0"] * (n - 1)))
        out.append(_row(["  " + p["ip"] for p in local]))
        if any("ip6" in p for p in local):
            out.append(_row(["  " + p.get("ip6", "") for p in local]))
    gw: dict[str, Any] = next(
        (net for net in status["networks"] if net["network"] == view["network"]), {}
    )
    br0 = " ".join(str(view.get(k)) for k in ("gateway", "gateway6") if view.get(k))
    out.append(bar + f"br0 {br0 or view['subnet']} in netns {view['namespace']}")
    out.append(" " * 11 + "|")
    out.append(
        " " * 11
        + f"{view['vxlan']}  vxlan vni {view['vni']} local {status['vtep']}"
        + (f" mtu {gw.get('mtu')}" if gw else "")
    )
    out.append(" " * 11 + "|")
    vteps: dict[str, list[dict[str, Any]]] = {}
    for p in remote:
        vteps.setdefault(p["vtep"], []).append(p)
    if not vteps:
        out.append(" " * 11 + "+-- (no remote VTEP: no container of this VNI on another host)")
    sec = view.get("ipsec") or {}
    for vtep, eps in sorted(vteps.items()):
        shown = ", ".join(
            f"{e['ip']} {e['mac']}" + ("" if e["state"] == "ok" else f" [{e['state']}]")
            for e in eps
        )
        out.append(" " * 11 + f"+-- {_wire(view, sec, vtep)} --> VTEP {vtep}: {shown}")
    for s in view.get("stale", []):
        out.append(" " * 11 + f"!   stale {describe_entry(s)} (no row in the table)")
    services = view.get("services") or []
    if services:
        out.append("")
        out.append("  service VIPs (nftables DNAT in each container's own namespace):")
        for svc in services:
            tasks = ", ".join(b["ip"] for b in svc["backends"])
            out.append(f"    {svc['service']:<12} {svc['vip']:<15} -> {tasks}")
    return "\n".join(line for line in out if line is not None)
