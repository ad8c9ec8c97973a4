"""PURE: swarm service VIPs -> the nftables ruleset of one container's namespace.

Docker gives a service in the default endpoint mode a virtual IP (VIP) on
each of its networks, and its DNS name resolves to that VIP; but it balances
VIPs only on its built-in `overlay` driver (with IPVS).  pyoverlay balances
them itself, in nftables, inside every container namespace that joined a
pyoverlay network (placement "in each sandbox": DNAT on the nat output hook,
so no SNAT, the task sees the client's own address, and the reply takes the
same path back through the client's conntrack entry).

The ruleset follows kube-proxy's nftables mode, one table per namespace:

    table ip pyoverlay {
        map vips { type ipv4_addr : verdict; elements = { VIP : goto svc-VIP } }
        chain output { type nat hook output priority dstnat; ip daddr vmap @vips }
        chain svc-VIP { dnat to numgen random mod N map { 0 : task1, ... } comment "NAME" }
    }

Swarm balances every port of a VIP, so the key is the address alone.  A
service's backends live in one rule; changing them rewrites that rule only,
in one transaction with nothing else (O(changed), not O(services)).

Where the mapping comes from: every host publishes, in its gossip row of a
local endpoint, the service and VIP its local dockerd reports for it
(`services` below reads those rows).  So a task leaves every host's rules
when its row goes (DeleteEndpoint, or its host declared dead), as fast as
its FDB entries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

TABLE = "pyoverlay"
FAMILY = "ip"
VIP_MAP = "vips"
DISPATCH_CHAIN = "output"
SERVICE_CHAIN_PREFIX = "svc-"
DSTNAT = -100
Commands = list[dict[str, Any]]


@dataclass(frozen=True)
class Backend:
    """One task of a service, as published by the host that runs it."""

    vip: IPv4Address
    service: str
    ip: IPv4Address
    version: tuple[int, str]


@dataclass(frozen=True)
class Service:
    name: str
    backends: tuple[IPv4Address, ...]  # sorted, unique


Vips = dict[IPv4Address, Service]


def services(backends: Iterable[Backend]) -> Vips:
    """VIP -> service (name of the newest row, every task address), for one network."""
    named: dict[IPv4Address, tuple[tuple[int, str], str]] = {}
    ips: dict[IPv4Address, set[IPv4Address]] = {}
    for b in backends:
        ips.setdefault(b.vip, set()).add(b.ip)
        if b.vip not in named or named[b.vip][0] < b.version:
            named[b.vip] = (b.version, b.service)
    return {vip: Service(named[vip][1], tuple(sorted(ips[vip]))) for vip in ips}


def merge(per_network: Iterable[Vips]) -> Vips:
    """The union for a namespace on several networks (VIPs are unique per network, and
    pyoverlay networks never overlap on one host)."""
    out: Vips = {}
    for vips in per_network:
        out.update(vips)
    return out


def chain_name(vip: IPv4Address) -> str:
    return f"{SERVICE_CHAIN_PREFIX}{vip}"


# -- the kernel's view -------------------------------------------------------


@dataclass(frozen=True)
class Programmed:
    """What one namespace's table holds, read back from `nft -j list table`.

    `intact` is False when the table exists but its skeleton (map, dispatch
    chain and rule) is not what pyoverlay makes: the plan then rebuilds it.
    Services are the svc-* chains whose single rule has the expected shape and
    whose VIP the map sends to them; anything else makes the table not intact.
    """

    intact: bool
    vips: Vips


def parse(listing: Mapping[str, Any] | None) -> Programmed | None:
    """`nft -j list table ip pyoverlay` -> Programmed (None: no table)."""
    if listing is None:
        return None
    items = listing.get("nftables") or []
    has_map = has_chain = False
    elements: dict[IPv4Address, str] = {}
    rules: dict[str, list[dict[str, Any]]] = {}
    chains: set[str] = set()
    ok = True
    for item in items:
        if "map" in item:
            m = item["map"]
            if m.get("name") != VIP_MAP:
                ok = False
                continue
            has_map = m.get("type") == "ipv4_addr" and m.get("map") == "verdict"
            for elem in m.get("elem") or []:
                target = _goto(elem)
                try:
                    vip = IPv4Address(str(elem[0]))
                except (ValueError, IndexError, TypeError):
                    ok = False
                    continue
                if target is None:
                    ok = False
                else:
                    elements[vip] = target
        elif "chain" in item:
            c = item["chain"]
            name = str(c.get("name"))
            if name == DISPATCH_CHAIN:
                has_chain = (
                    c.get("type") == "nat" and c.get("hook") == "output" and c.get("prio") == DSTNAT
                )
            elif name.startswith(SERVICE_CHAIN_PREFIX):
                chains.add(name)
            else:
                ok = False
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault(str(r.get("chain")), []).append(r)
        elif "set" in item:
            ok = False
    dispatch = rules.get(DISPATCH_CHAIN, [])
    has_dispatch = len(dispatch) == 1 and dispatch[0].get("expr") == _dispatch_expr()
    vips: Vips = {}
    for vip, target in elements.items():
        service = _service(rules.get(target, []))
        if target != chain_name(vip) or service is None:
            ok = False
            continue
        vips[vip] = service
    if chains != {chain_name(v) for v in vips}:
        ok = False  # an orphan chain, or one the map does not reach
    return Programmed(ok and has_map and has_chain and has_dispatch, vips)


def _goto(elem: Any) -> str | None:
    try:
        verdict = elem[1]
        return str(verdict["goto"]["target"])
    except (IndexError, KeyError, TypeError):
        return None


def _service(rules: list[dict[str, Any]]) -> Service | None:
    """The service a svc-* chain holds, if it is exactly the one rule `plan` writes."""
    if len(rules) != 1:
        return None
    try:
        pairs = rules[0]["expr"][0]["dnat"]["addr"]["map"]["data"]["set"]
        ips = tuple(sorted({IPv4Address(str(ip)) for _, ip in pairs}))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    svc = Service(str(rules[0].get("comment", "")), ips)
    return svc if rules[0].get("expr") == _service_expr(svc) else None


# -- the plan ------------------------------------------------------------------


def _obj(**kw: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **kw}


def _dispatch_expr() -> list[dict[str, Any]]:
    return [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@vips"}}]


def _service_expr(svc: Service) -> list[dict[str, Any]]:
    """dnat to numgen random mod N map { 0 : task0, 1 : task1, ... }"""
    pairs = [[i, str(ip)] for i, ip in enumerate(svc.backends)]
    numgen = {"numgen": {"mode": "random", "mod": len(pairs), "offset": 0}}
    return [{"dnat": {"addr": {"map": {"key": numgen, "data": {"set": pairs}}}}}]


def _service_rule(vip: IPv4Address, svc: Service) -> dict[str, Any]:
    return {"add": {"rule": _obj(chain=chain_name(vip), comment=svc.name, expr=_service_expr(svc))}}


def _element(vip: IPv4Address) -> dict[str, Any]:
    return _obj(name=VIP_MAP, elem=[[str(vip), {"goto": {"target": chain_name(vip)}}]])


def _add_service(vip: IPv4Address, svc: Service) -> Commands:
    return [
        {"add": {"chain": _obj(name=chain_name(vip))}},
        _service_rule(vip, svc),
        {"add": {"element": _element(vip)}},
    ]


def skeleton() -> Commands:
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"map": _obj(name=VIP_MAP, type="ipv4_addr", map="verdict")}},
        {
            "add": {
                "chain": _obj(
                    name=DISPATCH_CHAIN, type="nat", hook="output", prio=DSTNAT, policy="accept"
                )
            }
        },
        {"add": {"rule": _obj(chain=DISPATCH_CHAIN, expr=_dispatch_expr())}},
    ]


def delete_table() -> Commands:
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]


def keep(have: Programmed | None, want: Vips) -> Vips:
    """`want` plus everything `have` holds: what a restarting plugin may program before
    gossip has synced (its table is empty then; running containers use those rules)."""
    out = dict(want)
    for vip, svc in (have.vips if have is not None else {}).items():
        mine = out.get(vip)
        ips = set(svc.backends) | set(mine.backends if mine else ())
        out[vip] = Service(mine.name if mine else svc.name, tuple(sorted(ips)))
    return out


def removed(have: Programmed | None, want: Vips) -> dict[IPv4Address, set[IPv4Address]]:
    """VIP -> the tasks `have` sends to and `want` no longer does: their UDP flows must be
    forgotten (conntrack keeps DNATing a flow to its first task, gone or not)."""
    out = {}
    for vip, svc in (have.vips if have is not None else {}).items():
        kept = want.get(vip)
        gone = set(svc.backends) - set(kept.backends if kept is not None else ())
        if gone:
            out[vip] = gone
    return out


def plan(have: Programmed | None, want: Vips) -> Commands:
    """nft commands (one transaction) that turn `have` into `want`; [] when they match.

    No VIP wanted: no table (a namespace without services carries nothing of
    ours).  A table that is not intact is rebuilt whole, in the same
    transaction (delete, then create), so there is never a moment without rules.
    Otherwise only the VIPs that differ are touched: a changed service has its
    one rule replaced (flush + add), a new one gets chain, rule and element, a
    gone one loses element and chain.
    """
    vips = {v: s for v, s in want.items() if s.backends}
    if not vips:
        return delete_table() if have is not None else []
    if have is None or not have.intact:
        cmds = delete_table() if have is not None else []
        cmds += skeleton()
        for vip, svc in sorted(vips.items()):
            cmds += _add_service(vip, svc)
        return cmds
    cmds = []
    for vip in sorted(set(have.vips) - set(vips)):
        cmds.append({"delete": {"element": _element(vip)}})
        cmds.append({"delete": {"chain": _obj(name=chain_name(vip))}})
    for vip, svc in sorted(vips.items()):
        old = have.vips.get(vip)
        if old is None:
            cmds += _add_service(vip, svc)
        elif old != svc:
            cmds.append({"flush": {"chain": _obj(name=chain_name(vip))}})
            cmds.append(_service_rule(vip, svc))
    return cmds


def backends_of(rows: Iterable[tuple[str, Mapping[str, Any], tuple[int, str]]]) -> list[Backend]:
    """Gossip rows of one network's peer scope -> the service tasks among them."""
    out = []
    for _key, value, version in rows:
        vip, name = value.get("vip"), value.get("service")
        if not vip or not name:
            continue
        try:
            out.append(
                Backend(IPv4Address(str(vip)), str(name), IPv4Address(str(value["ip"])), version)
            )
        except (KeyError, ValueError):
            continue
    return out


def _docker_services(
    inspect: Mapping[str, Any] | None,
) -> Iterable[tuple[str, str, list[Mapping[str, Any]]]]:
    """(name, VIP, tasks) of each service with a VIP in dockerd's `network inspect
    --verbose` (dnsrr services have none: nothing to balance)."""
    services = (inspect or {}).get("Services") or {}
    if not isinstance(services, Mapping):
        return
    for name, svc in services.items():
        if not isinstance(svc, Mapping):
            continue
        vip = str(svc.get("VIP") or "")
        try:
            IPv4Address(vip)
        except ValueError:
            continue
        yield str(name), vip, [t for t in svc.get("Tasks") or [] if isinstance(t, Mapping)]


def bindings(inspect: Mapping[str, Any] | None) -> dict[str, tuple[str, str]]:
    """Endpoint id -> (service name, VIP), from dockerd's `network inspect --verbose`."""
    return {
        str(t["EndpointID"]): (name, vip)
        for name, vip, tasks in _docker_services(inspect)
        for t in tasks
        if t.get("EndpointID")
    }


def docker_view(inspect: Mapping[str, Any] | None) -> Vips:
    """What dockerd itself thinks each VIP balances over (task addresses)."""
    out: Vips = {}
    for name, vip, tasks in _docker_services(inspect):
        ips = set()
        for t in tasks:
            with contextlib.suppress(ValueError):
                ips.add(IPv4Address(str(t.get("EndpointIP"))))
        out[IPv4Address(vip)] = Service(name, tuple(sorted(ips)))
    return out
