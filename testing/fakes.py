"""An in-memory kernel for unit and contract tests.

It models just what pyoverlay uses: namespaces, links (bridge, vxlan, veth
pairs) with master/mtu/up/alias/addresses, and the rule that one VNI can
exist only once per host namespace.  `fail_on` injects a failure into the
first op whose text contains a given string, to test roll-back.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Collection, Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyoverlay.core.errors import KernelError, PyoverlayError
from pyoverlay.core.ip import IPAddr
from pyoverlay.driver.core.interfaces import (
    Kernel,
    KernelSnapshot,
    LinkView,
    NamespaceView,
    PeerEntries,
    RuleTables,
    UnderlayInfo,
)
from pyoverlay.driver.core.model import VETH_CONTAINER_PREFIX, VXLAN_PREFIX
from pyoverlay.driver.core.ops import (
    CreateNamespace,
    DeleteFdb,
    DeleteLink,
    DeleteNamespace,
    DeleteNeigh,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    Op,
    PeerOp,
    ReplaceFdb,
    ReplaceNeigh,
)

HOST = ""


class FakeKernel:
    def __init__(
        self, underlay: UnderlayInfo | None = None, other_namespaces: tuple[str, ...] = ()
    ) -> None:
        self.namespaces: dict[str, dict[str, LinkView]] = {HOST: {}}
        for name in other_namespaces:
            self.namespaces[name] = {}
        self.peers: dict[tuple[str, str], tuple[str, str]] = {}  # veth (ns, name) -> peer
        self._underlay = underlay or UnderlayInfo(IPv4Address("192.0.2.10"), "eth0", 1500)
        self.fail_on: str | None = None
        self.fdb: dict[tuple[str, str], dict[str, IPv4Address]] = {}  # (ns, dev) -> mac -> dst
        self.neigh: dict[tuple[str, str], dict[IPAddr, str]] = {}
        self.applied: list[Op] = []

    # -- helpers ---------------------------------------------------------

    def links(self, ns: str | None) -> dict[str, LinkView]:
        key = ns or HOST
        if key not in self.namespaces:
            raise KernelError("open namespace", key, errno.ENOENT, "No such file or directory")
        return self.namespaces[key]

    def _maybe_fail(self, op: Op) -> None:
        if self.fail_on and self.fail_on in str(op):
            self.fail_on = None
            raise KernelError("injected", str(op), errno.EIO, "injected failure")

    def _vni_in_use(self, vni: int, except_name: str) -> bool:
        return any(
            link.kind == "vxlan" and link.vni == vni and name != except_name
            for links in self.namespaces.values()
            for name, link in links.items()
        )

    def _drop(self, ns: str, name: str) -> bool:
        links = self.namespaces.get(ns)
        if links is None or name not in links:
            return False
        del links[name]
        self.fdb.pop((ns, name), None)
        self.neigh.pop((ns, name), None)
        peer = self.peers.pop((ns, name), None)
        if peer is not None:
            self.peers.pop(peer, None)
            self.namespaces.get(peer[0], {}).pop(peer[1], None)
        return True

    # -- Kernel ----------------------------------------------------------

    async def apply(self, op: Op) -> bool:
        self._maybe_fail(op)
        self.applied.append(op)
        match op:
            case CreateNamespace(name=name):
                if name in self.namespaces:
                    return False
                self.namespaces[name] = {}
                return True
            case DeleteNamespace(name=name):
                if name not in self.namespaces:
                    return False
                for link in list(self.namespaces[name]):
                    self._drop(name, link)
                del self.namespaces[name]
                return True
            case EnsureBridge():
                links = self.links(op.ns)
                old = links.get(op.name)
                addrs = old.addresses if old else ()
                for a in (op.address, op.address6):
                    if a is not None and a not in addrs:
                        addrs = (*addrs, a)
                links[op.name] = LinkView(
                    op.name, "bridge", op.mtu, True, alias=op.alias, addresses=addrs
                )
                return old is None
            case EnsureVxlan():
                links = self.links(op.ns)
                old = links.get(op.name)
                if old is not None and (old.vni, old.vxlan_port) != (op.vni, op.port):
                    del links[op.name]
                    old = None
                if old is None and self._vni_in_use(op.vni, op.name):
                    raise KernelError(
                        "create vxlan",
                        f"{op.name} (vni {op.vni})",
                        errno.EEXIST,
                        "A VXLAN device with the specified VNI already exists",
                    )
                if op.bridge not in links:
                    raise KernelError("enslave vxlan", op.name, errno.ENODEV, "no bridge")
                links[op.name] = LinkView(
                    op.name,
                    "vxlan",
                    op.mtu,
                    True,
                    master=op.bridge,
                    vni=op.vni,
                    vxlan_port=op.port,
                    vxlan_local=op.local,
                )
                return old is None
            case EnsureVeth():
                links = self.links(op.ns)
                host = self.namespaces[HOST]
                if op.overlay_name in links:
                    links[op.overlay_name] = replace(
                        links[op.overlay_name], master=op.bridge, mtu=op.mtu, up=True
                    )
                    return False
                if op.bridge not in links:
                    raise KernelError("enslave veth", op.overlay_name, errno.ENODEV, "no bridge")
                self._drop(HOST, op.container_name)
                host[op.container_name] = LinkView(
                    op.container_name, "veth", op.mtu, False, mac=op.mac
                )
                links[op.overlay_name] = LinkView(
                    op.overlay_name, "veth", op.mtu, True, master=op.bridge
                )
                self.peers[(HOST, op.container_name)] = (op.ns, op.overlay_name)
                self.peers[(op.ns, op.overlay_name)] = (HOST, op.container_name)
                return True
            case DeleteLink(ns=ns, name=name):
                return self._drop(ns or HOST, name)
            case ReplaceFdb(ns=ns, dev=dev, mac=mac, dst=dst):
                self._require(ns, dev)
                table = self.fdb.setdefault((ns, dev), {})
                changed = table.get(mac) != dst
                table[mac] = dst
                return changed
            case DeleteFdb(ns=ns, dev=dev, mac=mac, dst=dst):
                table = self.fdb.get((ns, dev), {})
                if table.get(mac) == dst:
                    del table[mac]
                    return True
                return False
            case ReplaceNeigh(ns=ns, dev=dev, ip=ip, mac=mac):
                self._require(ns, dev)
                ntable = self.neigh.setdefault((ns, dev), {})
                changed = ntable.get(ip) != mac
                ntable[ip] = mac
                return changed
            case DeleteNeigh(ns=ns, dev=dev, ip=ip):
                return self.neigh.get((ns, dev), {}).pop(ip, None) is not None
        raise AssertionError(f"unknown op {op!r}")

    def _require(self, ns: str, dev: str) -> None:
        if dev not in self.namespaces.get(ns, {}):
            raise KernelError("program peer", f"{ns}/{dev}", errno.ENODEV, "no such device")

    async def peer_entries(self, ns: str, dev: str) -> PeerEntries:
        if dev not in self.namespaces.get(ns, {}):
            return PeerEntries()
        return PeerEntries(dict(self.fdb.get((ns, dev), {})), dict(self.neigh.get((ns, dev), {})))

    async def apply_peer_ops(self, ops: Sequence[PeerOp]) -> list[PyoverlayError]:
        failed: list[PyoverlayError] = []
        for op in ops:
            try:
                await self.apply(op)
            except PyoverlayError as exc:
                failed.append(exc)
        return failed

    async def snapshot(self) -> KernelSnapshot:
        from pyoverlay.driver.overlay.plan import NAMESPACE_PATTERN

        namespaces = {
            name: NamespaceView(name, dict(links))
            for name, links in self.namespaces.items()
            if name != HOST and NAMESPACE_PATTERN.match(name)
        }
        host = {
            n: link
            for n, link in self.namespaces[HOST].items()
            if n.startswith((VXLAN_PREFIX, VETH_CONTAINER_PREFIX))
        }
        return KernelSnapshot(namespaces, host)

    async def underlay(self, address: IPv4Address | None) -> UnderlayInfo:
        if address is not None and address != self._underlay.address:
            return UnderlayInfo(address, self._underlay.ifname, self._underlay.mtu)
        return self._underlay

    async def close(self) -> None:
        return None


_: Kernel = FakeKernel()


class FakeTables:
    """nftables of many namespaces, in memory, for the subset vips.py uses.

    Like the kernel, a batch is one transaction (all or nothing), `add` of an
    existing table/chain/map is a no-op while `add rule` appends, deleting a
    missing object or a chain a map element still jumps to fails, and an
    element cannot jump to a chain that does not exist.  `listing()` has the
    shape of `nft -j list table`.  Tests can poke `tables` to simulate drift.
    """

    def __init__(self) -> None:
        # netns -> (family, table) -> {"maps": {name: {...}}, "chains": {name: {...}}}
        self.tables: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.batches: list[tuple[str, list[dict[str, Any]]]] = []
        self.fail_next: str | None = None
        self.reads = 0  # list_table calls (event-driven syncs should need none)
        self.flows: dict[str, list[tuple[IPv4Address, IPv4Address]]] = {}  # UDP conntrack

    async def apply(self, netns: Path | None, commands: list[dict[str, Any]]) -> None:
        key = str(netns)
        if not commands:
            return
        if self.fail_next is not None:
            why, self.fail_next = self.fail_next, None
            raise PyoverlayError(f"nft in {key}: {why}")
        work = copy.deepcopy(self.tables.get(key, {}))
        for cmd in commands:
            ((verb, body),) = cmd.items()
            ((kind, obj),) = body.items()
            _fake_nft(work, verb, kind, obj, key)
        self.tables[key] = work
        self.batches.append((key, commands))

    async def list_table(self, netns: Path | None, family: str, name: str) -> Any | None:
        self.reads += 1
        t = self.tables.get(str(netns), {}).get((family, name))
        if t is None:
            return None
        items: list[dict[str, Any]] = [{"table": {"family": family, "name": name}}]
        for m in t["maps"].values():
            items.append({"map": {"family": family, "table": name, **m}})
        for cname, c in t["chains"].items():
            items.append({"chain": {"family": family, "table": name, "name": cname, **c["spec"]}})
        for cname, c in t["chains"].items():
            for r in c["rules"]:
                items.append({"rule": {"family": family, "table": name, "chain": cname, **r}})
        return {"nftables": items}

    async def forget_flows(
        self, netns: Path | None, vip: IPv4Address, gone: Collection[IPv4Address]
    ) -> int:
        """Conntrack in memory: `flows[netns]` holds (vip, task) pairs a test put there."""
        have = self.flows.get(str(netns), [])
        doomed = [f for f in have if f[0] == vip and f[1] in gone]
        self.flows[str(netns)] = [f for f in have if f not in doomed]
        return len(doomed)

    def close(self) -> None:
        pass


def _fake_nft(work: dict[tuple[str, str], Any], verb: str, kind: str, o: Any, ns: str) -> None:
    def fail(why: str) -> None:
        raise PyoverlayError(f"nft in {ns}: {verb} {kind}: {why}")

    tkey = (o["family"], o["table"] if kind != "table" else o["name"])
    if kind == "table":
        if verb == "add":
            work.setdefault(tkey, {"maps": {}, "chains": {}})
        elif verb == "delete":
            if work.pop(tkey, None) is None:
                fail("No such file or directory")
        return
    t = work.get(tkey)
    if t is None:
        fail("No such file or directory (table)")
        return
    if kind == "map" and verb == "add":
        t["maps"].setdefault(o["name"], {"name": o["name"], "type": o["type"], "map": o["map"]})
    elif kind == "chain":
        spec = {k: o[k] for k in ("type", "hook", "prio", "policy") if k in o}
        if verb == "add":
            t["chains"].setdefault(o["name"], {"spec": spec, "rules": []})
        elif verb == "flush":
            if o["name"] not in t["chains"]:
                fail("No such file or directory")
            t["chains"][o["name"]]["rules"] = []
        elif verb == "delete":
            if o["name"] not in t["chains"]:
                fail("No such file or directory")
            for m in t["maps"].values():
                if any(e[1]["goto"]["target"] == o["name"] for e in m.get("elem", [])):
                    fail("Device or resource busy")
            del t["chains"][o["name"]]
    elif kind == "rule" and verb == "add":
        if o["chain"] not in t["chains"]:
            fail("No such file or directory (chain)")
        rule = {k: copy.deepcopy(v) for k, v in o.items() if k in ("expr", "comment")}
        t["chains"][o["chain"]]["rules"].append(rule)
    elif kind == "element":
        m = t["maps"].get(o["name"])
        if m is None:
            fail("No such file or directory (map)")
            return
        elems = m.setdefault("elem", [])
        for e in o["elem"]:
            present = [x for x in elems if x[0] == e[0]]
            if verb == "add":
                if e[1]["goto"]["target"] not in t["chains"]:
                    fail("No such file or directory (goto)")
                if not present:
                    elems.append(copy.deepcopy(e))
            elif verb == "delete":
                if not present:
                    fail("No such file or directory (element)")
                elems.remove(present[0])
        if not elems:
            m.pop("elem")
    else:
        fail("not modelled")


_t: RuleTables = FakeTables()
