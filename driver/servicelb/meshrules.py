"""PURE: swarm published ports (the routing mesh) -> this host's nftables table.

A service published in ingress mode (`-p 1080:80`, Docker's default) answers
on every node.  Docker builds that only for its built-in `overlay` driver and
only with IPVS (docs/design.md, "Routing mesh").  pyoverlay builds it in one
table in the host's namespace, on every node:

    table ip pyoverlay_mesh {
        set members { type ipv4_addr }            # underlay addresses of the other hosts
        map ports { type inet_proto . inet_service : verdict }        # -> port-tcp-1080
        map member_ports { type inet_proto . inet_service : verdict } # -> local-tcp-1080
        chain prerouting { type nat hook prerouting priority dstnat - 10
            ip saddr @members fib daddr type local meta l4proto . th dport vmap @member_ports
            fib daddr type local meta l4proto . th dport vmap @ports
            ip daddr @members meta l4proto . th dport vmap @ports }
        chain output { type nat hook output priority dstnat - 10
            ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @ports
            ip daddr @members meta l4proto . th dport vmap @ports }
        chain forwarded { type filter hook prerouting priority dstnat + 10
            ct mark SECURE ip saddr @members jump esp-in   # encrypted service: ESP only
            ct mark { MARK, SECURE } meta mark set ct mark }  # DOCKER-USER accepts these
        chain marked { type route hook output priority dstnat + 10
            ct mark SECURE meta mark set SECURE }  # this host's own: rerouted into ESP
        chain postrouting { type nat hook postrouting priority srcnat - 10
            ct mark { MARK, SECURE } ip daddr @members masquerade comment "<digest>" }
        chain esp-out { type filter hook postrouting priority srcnat + 50
            ct mark SECURE ip daddr @members meta l4proto != esp jump esp-check }
        chain esp-in  { ipsec in reqid REQID return; counter name plain_drops drop }
        chain esp-check { ipsec out reqid REQID return; counter name plain_drops drop }
        chain port-tcp-1080 { ct mark set MARK
            numgen random mod 3 vmap { 0 : goto to-tcp-1080-0, 1 : ..., 2 : ... } }
        chain local-tcp-1080 { ct mark set MARK
            numgen random mod 1 vmap { 0 : goto to-tcp-1080-0 } }
        chain to-tcp-1080-0 { meta l4proto tcp dnat to 172.18.0.3:80 }     # a local task
        chain to-tcp-1080-1 { meta l4proto tcp dnat to 192.168.99.2:1080 } # a host with one
    }

A service on an `-o encrypted` network (`Balanced.secure`) is marked SECURE
instead of MARK: its hop between nodes (both ways) is selected by the xfrm
policy the IPsec keeper installs per peer (secure/sa.py, MESH_MARK) and so
crosses the underlay as ESP, with the SAs of the encrypted networks.  Fail
closed, as the VXLAN guard: a SECURE packet to a member that is not
protected (no SA yet, a peer without ESP) is dropped after NAT, and one from
a member that did not arrive in ESP is dropped before it is delivered; both
counted in `plain_drops`.

A connection to any local address (or, from this host, to another member's)
on a published port is balanced over every task: a local one directly on its
docker_gwbridge address (the task sees the client's address), a remote one
through the host that runs it (DNAT to that host's address and the published
port, masqueraded: that task sees this host's address).  A connection that
arrives from a member was balanced by it already and goes to a local task
only; with none left (a task that moved, not yet known everywhere) it is
refused, never passed on again.  A published port with no task anywhere has
no element: the host answers it as any closed port (refused).

The table is small (one per host), so a change rebuilds it whole in one
transaction (delete and add: no moment without rules; established
connections keep their conntrack binding).  A rule's comment carries a
digest of the wanted content; the reconciler compares digest, chain rule counts and
map sizes with the kernel's listing (`parse`), which catches a table, chain,
rule or element deleted by hand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from pyoverlay.driver.core.marks import MESH, MESH_ESP, REQID
from pyoverlay.driver.core.model import ESP_OVERHEAD

TABLE = "pyoverlay_mesh"
FAMILY = "ip"
PROTOCOLS = ("tcp", "udp")
MARK = MESH  # the connections this table balanced (accepted in DOCKER-USER)
SECURE = MESH_ESP  # those of a service on an encrypted network (their hop is ESP)
PLAIN_COUNTER = "plain_drops"  # SECURE packets to or from a member that were not ESP
DSTNAT = -100
SRCNAT = 100
PRIORITY = -10  # before Docker's iptables nat (a node with IPVS programs its own DNAT)
Commands = list[dict[str, Any]]


@dataclass(frozen=True, order=True)
class PublishedPort:
    protocol: str  # "tcp" | "udp"
    published: int
    target: int

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: tcp or udp")
        for name in ("published", "target"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ValueError(f"{name} port {value}: 1-65535")


@dataclass(frozen=True)
class Target:
    """Where one balanced share goes: an address and port to DNAT to."""

    address: IPv4Address
    port: int
    local: bool  # a task on this host (docker_gwbridge), else a host that runs one


@dataclass(frozen=True)
class Balanced:
    """One published port on this host: the service and every share of it."""

    service: str
    port: PublishedPort
    targets: tuple[Target, ...]  # locals first, then remote hosts; each sorted
    secure: bool = False  # on an encrypted network: the hop between nodes is ESP


@dataclass(frozen=True)
class MeshInput:
    """What this host knows: services' published ports (from a manager), its own tasks'
    docker_gwbridge addresses, and which other hosts run tasks of each service."""

    ports: Mapping[str, tuple[PublishedPort, ...]]  # service -> published ports
    local: Mapping[str, tuple[IPv4Address, ...]]  # service -> local tasks (gwbridge address)
    remote: Mapping[str, tuple[IPv4Address, ...]]  # service -> hosts with tasks (underlay)
    members: tuple[IPv4Address, ...]  # every other host's underlay address
    secure: frozenset[str] = frozenset()  # services on an encrypted network
    mtu: int = 1500  # the underlay's


@dataclass(frozen=True)
class Mesh:
    ports: tuple[Balanced, ...]  # sorted by (protocol, published)
    members: tuple[IPv4Address, ...]  # sorted
    conflicts: tuple[str, ...] = ()  # why a port is not balanced (two services claim it)
    # TCP MSS of an encrypted hop (0: none): a full-size segment plus ESP would not fit the
    # underlay, and a client behind NAT may never learn the path MTU (bulk data stalled)
    mss: int = 0


def balance(view: MeshInput) -> Mesh:
    """Every published port with its targets; a port two services claim is a conflict
    (neither is balanced, both are reported: swarm itself never allows it)."""
    claims: dict[tuple[str, int], list[tuple[str, PublishedPort]]] = {}
    for service, ports in view.ports.items():
        for port in ports:
            claims.setdefault((port.protocol, port.published), []).append((service, port))
    out: list[Balanced] = []
    conflicts: list[str] = []
    for key in sorted(claims):
        owners = claims[key]
        if len({s for s, _ in owners}) > 1:
            names = ", ".join(sorted({s for s, _ in owners}))
            conflicts.append(f"{key[0]}/{key[1]} is published by several services: {names}")
            continue
        service, port = owners[0]
        local = [Target(a, port.target, True) for a in sorted(set(view.local.get(service, ())))]
        remote = [
            Target(a, port.published, False)
            for a in sorted(set(view.remote.get(service, ())) & set(view.members))
        ]
        out.append(Balanced(service, port, tuple(local + remote), service in view.secure))
    secure = any(b.secure for b in out)
    mss = view.mtu - IP_TCP_HEADERS - ESP_OVERHEAD if secure else 0
    return Mesh(tuple(out), tuple(sorted(set(view.members))), tuple(conflicts), mss)


IP_TCP_HEADERS = 40  # IPv4 20 + TCP 20 (TCP options come out of the MSS by themselves)


# -- the ruleset -----------------------------------------------------------------------


def _obj(**kw: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **kw}


def _key(b: Balanced) -> str:
    return f"{b.port.protocol}-{b.port.published}"


def port_chain(b: Balanced) -> str:
    return f"port-{_key(b)}"


def local_chain(b: Balanced) -> str:
    return f"local-{_key(b)}"


def target_chain(b: Balanced, i: int) -> str:
    return f"to-{_key(b)}-{i}"


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": _obj(chain=chain, expr=list(expr))}}


def _vmap(name: str) -> dict[str, Any]:
    selector = {
        "concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]
    }
    return {"vmap": {"key": selector, "data": f"@{name}"}}


def is_(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


_LOCAL_DST = is_({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
# this host's own connections to 127.0.0.0/8 stay local (a DNAT from a loopback source
# could not leave the host); as Docker's own OUTPUT rule does
_NOT_LOOPBACK = {
    "match": {
        "op": "!=",
        "left": {"payload": {"protocol": "ip", "field": "daddr"}},
        "right": {"prefix": {"addr": "127.0.0.0", "len": 8}},
    }
}
_FROM_MEMBER = is_({"payload": {"protocol": "ip", "field": "saddr"}}, "@members")
_TO_MEMBER = is_({"payload": {"protocol": "ip", "field": "daddr"}}, "@members")
_META_MARK = {"meta": {"key": "mark"}}
_MARKED = is_({"ct": {"key": "mark"}}, {"set": [MARK, SECURE]})
_SECURE = is_({"ct": {"key": "mark"}}, SECURE)


def _set_mark(b: Balanced) -> dict[str, Any]:
    return {"mangle": {"key": {"ct": {"key": "mark"}}, "value": SECURE if b.secure else MARK}}


def _ipsec(direction: str) -> dict[str, Any]:
    return is_({"ipsec": {"key": "reqid", "dir": direction, "spnum": 0}}, REQID)


def _base(name: str, hook: str, prio: int, kind: str = "nat") -> dict[str, Any]:
    chain = _obj(name=name, hook=hook, prio=prio, type=kind, policy="accept")
    return {"add": {"chain": chain}}


def _balance_rule(chain: str, b: Balanced, indexes: list[int]) -> dict[str, Any]:
    if not indexes:  # a member's connection and no local task: refused here, not passed on
        return _rule(chain, {"accept": None})
    numgen = {"numgen": {"mode": "random", "mod": len(indexes), "offset": 0}}
    pairs = [[n, {"goto": {"target": target_chain(b, i)}}] for n, i in enumerate(indexes)]
    return _rule(chain, _set_mark(b), {"vmap": {"key": numgen, "data": {"set": pairs}}})


def _element(b: Balanced, chain: str) -> list[Any]:
    return [{"concat": [b.port.protocol, b.port.published]}, {"goto": {"target": chain}}]


def build(mesh: Mesh) -> Commands:
    """The whole table (after `delete_table` if one exists: one transaction).  No port
    with a target: no table at all."""
    live = [b for b in mesh.ports if b.targets]
    if not live:
        return []
    concat = ["inet_proto", "inet_service"]

    cmds: Commands = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": _obj(name="members", type="ipv4_addr")}},
        {"add": {"map": _obj(name="ports", type=concat, map="verdict")}},
        {"add": {"map": _obj(name="member_ports", type=concat, map="verdict")}},
        _base("prerouting", "prerouting", DSTNAT + PRIORITY),
        _base("output", "output", DSTNAT + PRIORITY),
        _base("forwarded", "prerouting", DSTNAT - PRIORITY, "filter"),
        _base("postrouting", "postrouting", SRCNAT + PRIORITY),
        _rule("prerouting", _FROM_MEMBER, _LOCAL_DST, _vmap("member_ports")),
        _rule("prerouting", _LOCAL_DST, _vmap("ports")),
        _rule("prerouting", _TO_MEMBER, _vmap("ports")),
        _rule("output", _NOT_LOOPBACK, _LOCAL_DST, _vmap("ports")),
        _rule("output", _TO_MEMBER, _vmap("ports")),
    ]
    if any(b.secure for b in live):
        cmds += _esp_rules(mesh.mss)
    cmds += [
        _rule(
            "forwarded", _MARKED, {"mangle": {"key": _META_MARK, "value": {"ct": {"key": "mark"}}}}
        ),
        _rule("postrouting", _MARKED, _TO_MEMBER, {"masquerade": None}),
    ]
    cmds[-1]["add"]["rule"]["comment"] = digest(mesh)  # names the content (see `parse`)
    if mesh.members:
        elem = [str(a) for a in mesh.members]
        cmds.append({"add": {"element": _obj(name="members", elem=elem)}})
    for b in live:
        for i, t in enumerate(b.targets):
            cmds.append({"add": {"chain": _obj(name=target_chain(b, i))}})
            proto = is_({"meta": {"key": "l4proto"}}, b.port.protocol)
            dnat = {"dnat": {"addr": str(t.address), "port": t.port}}
            cmds.append(_rule(target_chain(b, i), proto, dnat))
        cmds.append({"add": {"chain": _obj(name=port_chain(b))}})
        cmds.append(_balance_rule(port_chain(b), b, list(range(len(b.targets)))))
        cmds.append({"add": {"chain": _obj(name=local_chain(b))}})
        locals_ = [i for i, t in enumerate(b.targets) if t.local]
        cmds.append(_balance_rule(local_chain(b), b, locals_))
    ports = [_element(b, port_chain(b)) for b in live]
    cmds.append({"add": {"element": _obj(name="ports", elem=ports)}})
    member_ports = [_element(b, local_chain(b)) for b in live]
    cmds.append({"add": {"element": _obj(name="member_ports", elem=member_ports)}})
    return cmds


def _esp_rules(mss: int) -> Commands:
    """Encrypted services' hop: this host's own connections rerouted with their mark (the
    xfrm policy selects it), the fail-closed checks both ways, and the TCP MSS of SYN and
    SYN-ACK lowered to what fits the underlay with ESP (forwarded ones and our own)."""
    drop: list[dict[str, Any]] = [{"counter": PLAIN_COUNTER}, {"drop": None}]
    # every packet of the connection and those related to it (ICMP errors quote its
    # headers), by its conntrack mark (another firewall may rewrite the packet's), but
    # not the ESP that carries them (its own conntrack has no mark)
    proto = {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "esp"}}
    return [
        {"add": {"counter": _obj(name=PLAIN_COUNTER)}},
        _base("marked", "output", DSTNAT - PRIORITY, "route"),
        _base("esp-out", "postrouting", SRCNAT + 50, "filter"),
        {"add": {"chain": _obj(name="esp-in")}},
        {"add": {"chain": _obj(name="esp-check")}},
        _rule("esp-in", _ipsec("in"), {"return": None}),
        _rule("esp-in", *drop),
        _rule("esp-check", _ipsec("out"), {"return": None}),
        _rule("esp-check", *drop),
        _rule("marked", _SECURE, {"mangle": {"key": _META_MARK, "value": SECURE}}),
        _rule("esp-out", _SECURE, _TO_MEMBER, proto, {"jump": {"target": "esp-check"}}),
        _rule("forwarded", _SECURE, _FROM_MEMBER, {"jump": {"target": "esp-in"}}),
        _rule("forwarded", _SECURE, *_clamp(mss)),
        _rule("marked", _SECURE, *_clamp(mss)),
    ]


def _clamp(mss: int) -> list[dict[str, Any]]:
    """`tcp flags syn tcp option maxseg size > MSS tcp option maxseg size set MSS`."""
    option = {"tcp option": {"name": "maxseg", "field": "size"}}
    syn = {"match": {"op": "in", "left": {"payload": {"protocol": "tcp", "field": "flags"}},
                     "right": "syn"}}  # fmt: skip
    larger = {"match": {"op": ">", "left": option, "right": mss}}
    return [syn, larger, {"mangle": {"key": option, "value": mss}}]


def delete_table() -> Commands:
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]


def digest(mesh: Mesh) -> str:
    """A short digest of the balanced content (it names the table's state in its comment)."""
    doc = [
        [b.service, b.port.protocol, b.port.published, b.port.target, b.secure]
        + [[str(t.address), t.port, t.local] for t in b.targets]
        for b in mesh.ports
        if b.targets
    ]
    doc.append([str(a) for a in mesh.members])
    if mesh.mss:
        doc.append([mesh.mss])
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return "pyoverlay mesh " + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Shape:
    """What can be compared between the wanted table and the kernel's listing."""

    comment: str  # the digest, held by the postrouting rule (libnftables' JSON drops a
    # table's comment)
    rules: tuple[tuple[str, int], ...]  # (chain, rule count), sorted
    elements: tuple[tuple[str, int], ...]  # (set or map, element count), sorted


def shape_of(commands: Commands) -> Shape | None:
    """The shape `build` output has (None: no table)."""
    if not commands:
        return None
    comment = ""
    rules: dict[str, int] = {}
    elements: dict[str, int] = {}
    for cmd in commands:
        add = cmd.get("add", {})
        if "chain" in add:
            rules.setdefault(add["chain"]["name"], 0)
        elif "set" in add or "map" in add:
            obj = add.get("set") or add.get("map")
            elements.setdefault(obj["name"], 0)
        elif "rule" in add:
            rules[add["rule"]["chain"]] = rules.get(add["rule"]["chain"], 0) + 1
            comment = str(add["rule"].get("comment", comment))
        elif "element" in add:
            name = add["element"]["name"]
            elements[name] = elements.get(name, 0) + len(add["element"]["elem"])
    return Shape(comment, tuple(sorted(rules.items())), tuple(sorted(elements.items())))


def parse(listing: Mapping[str, Any] | None) -> Shape | None:
    """`nft -j list table ip pyoverlay_mesh` -> its Shape (None: no table)."""
    if listing is None:
        return None
    comment = ""
    rules: dict[str, int] = {}
    elements: dict[str, int] = {}
    for item in listing.get("nftables") or []:
        if not isinstance(item, Mapping):
            continue
        if "chain" in item:
            rules.setdefault(str(item["chain"].get("name")), 0)
        elif "rule" in item:
            chain = str(item["rule"].get("chain"))
            rules[chain] = rules.get(chain, 0) + 1
            comment = str(item["rule"].get("comment", comment))
        elif "set" in item or "map" in item:
            obj = item.get("set") or item.get("map") or {}
            elements[str(obj.get("name"))] = len(obj.get("elem") or [])
    return Shape(comment, tuple(sorted(rules.items())), tuple(sorted(elements.items())))


def plan(have: Shape | None, mesh: Mesh) -> Commands:
    """nft commands (one transaction) that make the table hold `mesh`; [] when it does."""
    want = build(mesh)
    if shape_of(want) == have:
        return []
    return (delete_table() if have is not None else []) + want


def listener_conflicts(mesh: Mesh, listeners: Iterable[tuple[str, str, int]]) -> tuple[str, ...]:
    """Published ports a process on this host also listens on (not only on loopback): the
    mesh's DNAT takes the connections first, so that process no longer gets them."""
    taken: dict[tuple[str, int], str] = {}
    for protocol, addr, port in sorted(listeners):
        if not addr.startswith("127.") and addr != "::1":
            taken.setdefault((protocol, port), addr)
    return tuple(
        f"{b.port.protocol}/{b.port.published} is also listened on here by another process "
        f"({taken[(b.port.protocol, b.port.published)]}): the mesh takes its connections first"
        for b in mesh.ports
        if b.targets and (b.port.protocol, b.port.published) in taken
    )
