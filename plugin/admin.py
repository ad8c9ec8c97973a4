"""The admin endpoint: a unix socket in --state-dir for the `pyoverlay` CLI.

GET  /status            health, version, this node, members by state, networks
GET  /metrics           Prometheus text (pyoverlay.core.metrics)
GET  /members           every member the gossip knows, with state and VTEP
GET  /peers[?network=]  per network: table rows next to kernel FDB/ARP entries,
                        each marked ok / missing / stale
GET  /services[?network=]  per network: service VIPs and tasks from the table, what
                        each local container has programmed (ok / missing / differs),
                        and where dockerd's own view differs
GET  /mesh              published ports on this node (routing mesh): targets, problems
POST /reconcile[?dry_run=1]   what the reconciler would change (or changes now)
POST /leave             leave the cluster gracefully (decommissioning this host)
POST /forget?node=ID    remove a dead host for good (its address blocks return to the pool)
POST /keys/reload       re-read --gossip-key-file (live key rotation; SIGHUP does the same)

The socket lives in the state dir, so several plugins on one machine (one
per Docker host) never collide: the CLI finds it through the same
--state-dir / PYOVERLAY_STATE_DIR the plugin was given.
"""

from __future__ import annotations

from aiohttp import web

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.metrics import METRICS
from pyoverlay.driver.overlay import peers
from pyoverlay.ipam.cluster import ClusterGuard
from pyoverlay.plugin.parts import Parts
from pyoverlay.plugin.views import (
    ipsec_view,
    members_view,
    peers_view,
    services_view,
    version,
)

PARTS: web.AppKey[Parts] = web.AppKey("admin-parts", Parts)

ADMIN_SOCKET = "admin.sock"
MEMBERS_FILE = "members.json"  # last known membership, for the CLI when the plugin is down


async def status(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    driver, gossip = parts.driver, parts.gossip
    members = members_view(gossip, driver)
    counts: dict[str, int] = {}
    for m in members:
        counts[m["status"]] = counts.get(m["status"], 0) + 1
    stored: dict[str, int] = {}  # rows held per scope, tombstones included
    for scope, _ in gossip.node.table.rows if gossip else ():
        stored[scope] = stored.get(scope, 0) + 1
    nets = [
        {
            "network": n.network_id[:12],
            "rows": stored.get(peers.scope(n.vni), 0)
            if gossip
            else len(driver.directory.rows(peers.scope(n.vni))),
            "vni": n.vni,
            "subnet": str(n.subnet),
            **({"subnet6": str(n.subnet6)} if n.subnet6 else {}),
            "mtu": n.mtu,
            "encrypted": n.encrypted,
            "namespace": n.namespace if driver.active(n.network_id) else None,
            "endpoints": sum(1 for e in driver.endpoints.values() if e.network_id == n.network_id),
        }
        for n in driver.networks.values()
    ]
    return web.json_response(
        {
            "health": "ok",
            "version": version(),
            "node": driver.node_id,
            "vtep": str(driver.underlay.address),
            "gossip": gossip.node.addr if gossip else None,
            "members": counts,
            "data_path_kept": sorted(m["name"] for m in members if m["data_path_kept"]),
            "synced": gossip.synced.is_set() if gossip else True,
            "peer_pruning": driver.prune_peers,
            "rows_pending": sorted(
                n.network_id[:12]
                for n in driver.networks.values()
                if driver.active(n.network_id) and not driver.directory.rows_complete(str(n.vni))
            ),
            "networks": nets,
            "disagreements": {nid[:12]: d for nid, d in driver.disagreements().items()},
            "swarm_refused": dict(parts.swarm.refused) if parts.swarm else {},
            "counters": (
                {
                    **gossip.counters,
                    "updates_by_stream_queued": len(gossip.node.large),
                    "updates_too_large_dropped": gossip.node.never_fit,
                }
                if gossip
                else {}
            ),
            "ipsec": await ipsec_view(parts.keeper),
        }
    )


async def members(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    return web.json_response(members_view(parts.gossip, parts.driver))


async def peers_handler(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    want = request.query.get("network", "")
    nets = [n for n in parts.driver.networks.values() if not want or n.network_id.startswith(want)]
    return web.json_response([await peers_view(parts.driver, n, parts.keeper) for n in nets])


async def services_handler(request: web.Request) -> web.Response:
    parts = request.app[PARTS]
    want = request.query.get("network", "")
    nets = [n for n in parts.driver.networks.values() if not want or n.network_id.startswith(want)]
    return web.json_response(
        [await services_view(parts.driver, parts.vips, n, parts.docker) for n in nets]
    )


async def mesh_handler(request: web.Request) -> web.Response:
    mesh = request.app[PARTS].mesh
    return web.json_response(mesh.view() if mesh is not None else {"off": True})


async def reconcile(request: web.Request) -> web.Response:
    dry = request.query.get("dry_run", "") in ("1", "true", "yes")
    ops, errors = await request.app[PARTS].driver.reconcile(dry_run=dry)
    return web.json_response({"dry_run": dry, "ops": [str(o) for o in ops], "errors": errors})


async def metrics(request: web.Request) -> web.Response:
    driver, gossip = request.app[PARTS].driver, request.app[PARTS].gossip
    g: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    states: dict[str, float] = {}
    for m in members_view(gossip, driver):
        states[m["status"]] = states.get(m["status"], 0) + 1
    g["pyoverlay_gossip_members"] = {(("state", k),): v for k, v in states.items()}
    tables: dict[str, float] = {}
    if gossip is not None:
        for row in gossip.node.table.visible():
            table = row.scope.split("/", 1)[0]
            tables[table] = tables.get(table, 0) + 1
        for name, value in gossip.counters.items():
            if name.startswith("dropped_"):
                key = (("reason", name.removeprefix("dropped_")),)
                g.setdefault("pyoverlay_gossip_dropped_total", {})[key] = value
            else:
                g[f"pyoverlay_gossip_{name}_total"] = {(): value}
        g["pyoverlay_gossip_malformed_updates_total"] = {(): gossip.node.malformed}
    g["pyoverlay_table_rows"] = {(("table", k),): v for k, v in tables.items()}
    fdb = neigh = 0
    for net in driver.active_networks():
        entries = await driver.kernel.peer_entries(net.namespace, net.vxlan)
        fdb += len(entries.fdb)
        neigh += len(entries.neigh)
    g["pyoverlay_fdb_entries"] = {(): fdb}
    g["pyoverlay_neigh_entries"] = {(): neigh}
    g["pyoverlay_networks"] = {(): len(driver.networks)}
    g["pyoverlay_endpoints"] = {(): len(driver.endpoints)}
    return web.Response(text=METRICS.render(g), content_type="text/plain")


async def leave(request: web.Request) -> web.Response:
    gossip = request.app[PARTS].gossip
    if gossip is None:
        return web.json_response({"error": "single-host mode: there is no cluster to leave"})
    await gossip.stop(leave=True)
    return web.json_response({"left": gossip.node.name, "note": "restart the plugin to join again"})


async def forget(request: web.Request) -> web.Response:
    ipam, gossip = request.app[PARTS].ipam, request.app[PARTS].gossip
    if gossip is None or ipam is None or not isinstance(ipam.guard, ClusterGuard):
        return web.json_response({"error": "single-host mode: there is no cluster"})
    node = request.query.get("node", "")
    try:
        res = await ipam.guard.forget(node)
    except PyoverlayError as exc:
        return web.json_response({"error": str(exc)})
    gossip.forget(node)
    return web.json_response(res)


async def keys_reload(request: web.Request) -> web.Response:
    return web.json_response(request.app[PARTS].reload_keys())


def make_admin_app(parts: Parts) -> web.Application:
    app = web.Application()
    app[PARTS] = parts
    app.router.add_get("/status", status)
    app.router.add_get("/members", members)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/peers", peers_handler)
    app.router.add_get("/services", services_handler)
    app.router.add_get("/mesh", mesh_handler)
    app.router.add_post("/reconcile", reconcile)
    app.router.add_post("/leave", leave)
    app.router.add_post("/keys/reload", keys_reload)
    app.router.add_post("/forget", forget)
    return app
