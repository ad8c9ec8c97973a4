"""What `pyoverlay status/members/peers/services` show, worked out from the parts (the
admin API in admin.py serves them as JSON; the CLI words them)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.ip import addr_key
from pyoverlay.driver.core.model import NetworkSpec
from pyoverlay.driver.overlay import peers
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.secure.keeper import Encryption
from pyoverlay.driver.servicelb import ruleset as vips
from pyoverlay.driver.servicelb.programmer import VipProgrammer
from pyoverlay.plugin.docker_api import DockerApi


def version() -> str:
    try:
        return metadata.version("pyoverlay")
    except metadata.PackageNotFoundError:
        return "unknown"


def members_view(gossip: GossipRuntime | None, driver: OverlayDriver) -> list[dict[str, Any]]:
    if gossip is None:
        return [
            {
                "name": driver.node_id,
                "addr": "-",
                "status": "alive",
                "vtep": str(driver.underlay.address),
                "incarnation": 0,
                "self": True,
                "data_path_kept": False,
            }
        ]
    me = gossip.node.name
    kept = gossip.checks.kept()  # silent plugin, host up: its containers' entries stay
    return [
        {
            "name": m.name,
            "addr": m.addr,
            "status": m.status,
            "vtep": m.meta.get("vtep", ""),
            "incarnation": m.inc,
            "self": m.name == me,
            "data_path_kept": m.name in kept,
        }
        for m in sorted(gossip.node.members.by_name.values(), key=lambda m: m.name)
    ] + [
        {
            "name": name,
            "addr": gossip.expected[name][0],
            "status": "unknown",
            "vtep": vtep,
            "incarnation": None,
            "self": False,
            "data_path_kept": True,
        }
        for name, vtep in sorted(kept.items())
        if name not in gossip.node.members.by_name
    ]


def network_summary(net: NetworkSpec) -> dict[str, Any]:
    return {
        "network": net.network_id[:12],
        "vni": net.vni,
        "subnet": str(net.subnet),
        "gateway": str(net.gateway) if net.gateway else None,
        **({"subnet6": str(net.subnet6)} if net.subnet6 else {}),
        **({"gateway6": str(net.gateway6)} if net.gateway6 else {}),
        "namespace": net.namespace,
        "vxlan": net.vxlan,
        "encrypted": net.encrypted,
    }


async def ipsec_view(enc: Encryption | None) -> dict[str, Any] | None:
    """The IPsec state of the last sync and the guard's counters now (None: no cluster,
    no guard)."""
    if enc is None:
        return None
    r = enc.report
    return {
        "available": enc.unsupported is None,
        "why_not": enc.unsupported,
        "rotation_s": enc.rotation,
        "rekey_packets": enc.rekey_packets,
        "admission": enc.inputs.members is not None,
        "admitted": sorted(str(a) for a in enc.admitted),
        "drops": await enc.drop_counters(),
        "sending": r.sending,
        "receiving": r.receiving,
        "errors": r.errors,
        "synced_at": r.at,
        "installed_sas": enc.installed,
        "kernel_reads": enc.reads,
    }


async def peers_view(
    driver: OverlayDriver, net: NetworkSpec, keeper: Encryption | None = None
) -> dict[str, Any]:
    if not driver.active(net.network_id):
        # lazy: no local endpoint, so no sandbox and no rows of it on this host
        return {**network_summary(net), "namespace": None, "peers": [], "stale": []}
    remotes = driver.remote_endpoints(net.vni)
    want = peers.desired(remotes, driver.underlay.address)
    have = await driver.kernel.peer_entries(net.namespace, net.vxlan)
    rows = []
    for r in sorted(remotes, key=lambda r: r.ip):
        local = r.vtep == driver.underlay.address
        if local:
            state = "local"
        else:
            ips = (r.ip, r.ip6) if r.ip6 is not None else (r.ip,)
            ok = have.fdb.get(r.mac) == r.vtep and all(have.neigh.get(i) == r.mac for i in ips)
            mine = all(want.neigh.get(i) == r.mac for i in ips)
            state = "ok" if ok else ("missing" if mine else "shadowed")
        rows.append(
            {
                "endpoint": r.endpoint_id[:12],
                "ip": str(r.ip),
                **({"ip6": str(r.ip6)} if r.ip6 is not None else {}),
                "mac": r.mac,
                "vtep": str(r.vtep),
                "state": state,
            }
        )
    extra = [
        {"kind": "fdb", "mac": mac, "dst": str(dst)}
        for mac, dst in sorted(have.fdb.items())
        if want.fdb.get(mac) != dst
    ] + [
        {"kind": "neigh", "ip": str(ip), "mac": mac, "dst": str(have.fdb.get(mac, ""))}
        for ip, mac in sorted(have.neigh.items(), key=lambda kv: addr_key(kv[0]))
        if want.neigh.get(ip) != mac
    ]
    # entries towards a host whose plugin is silent but whose kernel answers stay on
    # purpose (cluster/hostcheck.py): "kept", not "stale"
    kept = driver.directory.kept_vteps()
    return {
        **network_summary(net),
        "peers": rows,
        "stale": [e for e in extra if e["dst"] not in kept],
        "kept": [e for e in extra if e["dst"] in kept],
        "ipsec": await ipsec_view(keeper) if net.encrypted else None,
    }


async def services_view(
    driver: OverlayDriver,
    programmer: VipProgrammer | None,
    net: NetworkSpec,
    docker: DockerApi | None,
) -> dict[str, Any]:
    rows = driver.directory.rows(peers.scope(net.vni))
    where = {
        str(v.get("ip")): {"endpoint": k[:12], "host": str(v.get("vtep", ""))} for k, v, _ in rows
    }
    want = vips.services(vips.backends_of(rows))
    services = [
        {
            "vip": str(vip),
            "service": svc.name,
            "backends": [
                {"ip": str(b), **where.get(str(b), {"endpoint": "", "host": ""})}
                for b in svc.backends
            ],
        }
        for vip, svc in sorted(want.items())
    ]
    containers = []
    for sandbox, eps in sorted(programmer.sandboxes(net.vni).items() if programmer else ()):
        assert programmer is not None
        wanted = programmer.wanted_vips(sandbox)
        state: dict[str, str] = {}
        error = programmer.vip_errors.get(sandbox, "")
        try:
            have = await programmer.programmed_vips(sandbox)
        except PyoverlayError as exc:
            have, error = None, str(exc)
        got = have.vips if have is not None else {}
        for vip in sorted(set(wanted) | set(got)):
            if vip not in wanted:
                state[str(vip)] = "stale"
            elif vip not in got:
                state[str(vip)] = "missing"
            else:
                state[str(vip)] = "ok" if got[vip] == wanted[vip] else "differs"
        containers.append(
            {
                "sandbox": sandbox,
                "endpoints": [e.endpoint_id[:12] for e in eps],
                "intact": have.intact if have is not None else not wanted,
                "vips": state,
                "error": error,
            }
        )
    view: dict[str, Any] = {**network_summary(net), "services": services, "containers": containers}
    if docker is not None and net.swarm:
        view["docker"] = await docker_disagreements(docker, net, want)
    return view


async def docker_disagreements(
    docker: DockerApi, net: NetworkSpec, want: vips.Vips
) -> list[str] | str:
    """Where dockerd's `network inspect --verbose` differs from the table (or why unknown)."""
    try:
        info = await docker.network(net.network_id)
    except PyoverlayError as exc:
        return f"dockerd not readable: {exc}"
    theirs = vips.docker_view(info)
    out = []
    for vip in sorted(set(theirs) | set(want)):
        name = (theirs.get(vip) or want[vip]).name
        t_ips = set(theirs[vip].backends) if vip in theirs else set()
        o_ips = set(want[vip].backends) if vip in want else set()
        for ip in sorted(t_ips - o_ips):
            out.append(f"{name} {vip}: dockerd lists task {ip}, the table does not (yet)")
        for ip in sorted(o_ips - t_ips):
            out.append(f"{name} {vip}: the table has task {ip}, dockerd does not list it")
    return out
