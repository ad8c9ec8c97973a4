"""The only module that imports pyroute2: carries out Ops with netlink.

(~470 lines, one class: the Kernel adapter's sockets, link ops and snapshot share
its per-namespace netlink sockets; FDB/ARP entries in bulk are apart, entries.py.)

Rules this adapter keeps (see docs/design.md, "kernel adapter"):
* one long-lived AsyncIPRoute per namespace (a netns socket is made by a
  forked child, ~8 ms), opened under a per-namespace lock so two callers
  never open two; closed before the namespace is removed, because the
  socket itself pins the namespace (the driver's per-network lock makes sure
  nobody else is using it then);
* one dump at a time per socket (pyroute2 answers EBUSY otherwise), and
  every dump is consumed to the end inside the lock;
* `flags=0` everywhere, so a missing namespace is an error and never created
  by accident; namespaces are created only by CreateNamespace;
* every op is idempotent: EEXIST/ENODEV/ENOENT are handled, not raised;
* netlink errors become KernelError(op, object, errno, kernel text).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_address, ip_interface
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pyroute2 import AsyncIPRoute, NetlinkError, netns
from pyroute2 import config as pyroute2_config

from pyoverlay.core.errors import InvalidOption, KernelError, PyoverlayError
from pyoverlay.driver.core.interfaces import (
    KernelSnapshot,
    LinkView,
    NamespaceView,
    PeerEntries,
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
from pyoverlay.driver.kernel import rtnl
from pyoverlay.driver.kernel.entries import GONE, PeerEntryAdapter
from pyoverlay.driver.kernel.netns import NetnsThread
from pyoverlay.driver.overlay.plan import NAMESPACE_PATTERN

# pyroute2 makes a namespace in a forked child and gives it 2 s to answer; a busy machine
# (CI's IPsec tier: an emulated CPU beside other tiers) took longer, and the container's
# create failed ("create namespace ...: no response from the child"). Docker waits
# longer than this for the whole call.
pyroute2_config.default_communicate_timeout = 20

log = structlog.get_logger("pyoverlay.kernel")
T = TypeVar("T")
NETNS_DIR = Path(netns.NETNS_RUN_DIR)
AF_INET, AF_INET6 = 2, 10
IFA_F_NODAD = 0x02


def _mountpoints() -> set[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def _is_mountpoint(path: Path) -> bool:
    return os.path.realpath(path) in _mountpoints()  # /var/run is a symlink to /run


def _kernel_error(op: str, obj: str, exc: NetlinkError) -> KernelError:
    text = str(exc.args[1]) if len(exc.args) > 1 else os.strerror(exc.code)
    return KernelError(op, obj, exc.code, text)


class PyrouteKernel:
    def __init__(self, netns_dir: Path = NETNS_DIR) -> None:
        self.netns_dir = netns_dir
        self._host: AsyncIPRoute | None = None
        self._sockets: dict[str, AsyncIPRoute] = {}
        # Serialises dumps per socket (pitfall: concurrent dumps -> EBUSY).
        self._dump_locks: dict[str, asyncio.Lock] = {}
        self._open_locks: dict[str, asyncio.Lock] = {}
        self._netlink = NetnsThread("netlink")  # raw netlink sockets made inside a namespace
        self._entries = PeerEntryAdapter(netns_dir, self._netlink)  # FDB/ARP in bulk

    # -- sockets ---------------------------------------------------------

    async def _ipr(self, ns: str | None) -> AsyncIPRoute:
        if ns is None:
            if self._host is not None:
                return self._host
            async with self._open_locks.setdefault("", asyncio.Lock()):
                if self._host is None:
                    host = AsyncIPRoute(ext_ack=True)
                    await host.setup_endpoint()
                    self._host = host
            return self._host
        sock = self._sockets.get(ns)
        if sock is not None:
            return sock
        async with self._open_locks.setdefault(ns, asyncio.Lock()):
            sock = self._sockets.get(ns)
            if sock is None:
                path = self.netns_dir / ns
                if not path.exists():
                    raise KernelError("open namespace", ns, errno.ENOENT, f"{path} does not exist")
                sock = AsyncIPRoute(netns=str(path), flags=0, ext_ack=True)
                await sock.setup_endpoint()
                self._sockets[ns] = sock
        return sock

    def _forget(self, ns: str) -> None:
        sock = self._sockets.pop(ns, None)
        if sock is not None:
            sock.close()

    async def close(self) -> None:
        for ns in list(self._sockets):
            self._forget(ns)
        if self._host is not None:
            self._host.close()
            self._host = None
        self._netlink.close()

    @asynccontextmanager
    async def _dump_lock(self, ns: str | None) -> AsyncIterator[None]:
        key = ns or ""
        lock = self._dump_locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    async def _dump(self, ns: str | None, kind: str, **kw: Any) -> list[Any]:
        ipr = await self._ipr(ns)
        async with self._dump_lock(ns):
            method = getattr(ipr, kind)
            return [m async for m in await method("dump", **kw)]

    async def _call(self, what: str, obj: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except NetlinkError as exc:
            raise _kernel_error(what, obj, exc) from exc

    async def _get_link(self, ns: str | None, name: str) -> Any | None:
        ipr = await self._ipr(ns)
        try:
            return (await ipr.link("get", ifname=name))[0]
        except NetlinkError as exc:
            if exc.code in GONE:
                return None
            raise _kernel_error("get link", f"{ns or 'host'}/{name}", exc) from exc

    # -- ops -------------------------------------------------------------

    async def apply(self, op: Op) -> bool:
        match op:
            case CreateNamespace():
                created = self._create_namespace(op)
                ipr = await self._ipr(op.name)
                await self._call("set lo up", op.name, lambda: ipr.link("set", index=1, state="up"))
                return created
            case DeleteNamespace():
                return self._delete_namespace(op)
            case EnsureBridge():
                return await self._ensure_bridge(op)
            case EnsureVxlan():
                return await self._ensure_vxlan(op)
            case EnsureVeth():
                return await self._ensure_veth(op)
            case DeleteLink():
                return await self._delete_link(op.ns, op.name)
            case ReplaceFdb() | DeleteFdb() | ReplaceNeigh() | DeleteNeigh():
                return await self._peer_op(op)
        raise AssertionError(f"unknown op {op!r}")

    async def _peer_op(self, op: PeerOp) -> bool:
        (result,) = await self._entries.results([op])
        if isinstance(result, PyoverlayError):
            raise result
        return result

    async def apply_peer_ops(self, ops: Sequence[PeerOp]) -> list[PyoverlayError]:
        return [r for r in await self._entries.results(ops) if isinstance(r, PyoverlayError)]

    async def peer_entries(self, ns: str, dev: str) -> PeerEntries:
        return await self._entries.read(ns, dev)

    def _create_namespace(self, op: CreateNamespace) -> bool:
        path = self.netns_dir / op.name
        if path.exists():
            if _is_mountpoint(path):
                return False
            path.unlink()  # a leftover file from a create that died half-way
        try:
            netns.create(str(path))
        except OSError as exc:
            raise KernelError("create namespace", op.name, exc.errno or 0, str(exc)) from exc
        return True

    def _delete_namespace(self, op: DeleteNamespace) -> bool:
        self._forget(op.name)
        path = self.netns_dir / op.name
        if not path.exists():
            return False
        try:
            netns.remove(str(path))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise KernelError("delete namespace", op.name, exc.errno or 0, str(exc)) from exc
        return True

    async def _ensure_bridge(self, op: EnsureBridge) -> bool:
        ipr = await self._ipr(op.ns)
        obj = f"{op.ns}/{op.name}"
        created = False
        link = await self._get_link(op.ns, op.name)
        if link is None:
            await self._call(
                "create bridge",
                obj,
                # no multicast snooping: a container's IPv6 neighbour solicitation (to a
                # multicast group) always reaches the VTEP, whose proxy answers it
                lambda: ipr.link(
                    "add", ifname=op.name, kind="bridge", mtu=op.mtu, br_mcast_snooping=0
                ),
            )
            created = True
            link = await self._get_link(op.ns, op.name)
            assert link is not None
        idx = link["index"]
        await self._call(
            "set bridge",
            obj,
            lambda: ipr.link("set", index=idx, mtu=op.mtu, ifalias=op.alias, state="up"),
        )
        for address in (op.address, op.address6):
            if address is None:
                continue
            # IPv6: no duplicate address detection (the gateway is the same on every host's
            # br0, each in its own namespace), as libnetwork adds containers' addresses
            extra = {"family": AF_INET6, "flags": IFA_F_NODAD} if address.version == 6 else {}
            try:
                await ipr.addr(
                    "add",
                    index=idx,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                    **extra,
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _kernel_error("add address", f"{obj} {address}", exc) from exc
        return created

    async def _ensure_vxlan(self, op: EnsureVxlan) -> bool:
        obj = f"{op.ns}/{op.name}"
        ns_ipr = await self._ipr(op.ns)
        link = await self._get_link(op.ns, op.name)
        if link is not None and not _vxlan_matches(link, op):
            log.warning("vxlan has the wrong settings; recreating", ns=op.ns, ifname=op.name)
            await self._delete_link(op.ns, op.name)
            link = None
        created = False
        if link is None:
            host = await self._ipr(None)
            await self._delete_link(None, op.name)  # leftover of a create that died mid-move
            await self._call(
                "create vxlan",
                f"{op.name} (vni {op.vni})",
                lambda: host.link(
                    "add",
                    ifname=op.name,
                    kind="vxlan",
                    vxlan_id=op.vni,
                    vxlan_local=str(op.local),
                    vxlan_port=op.port,
                    vxlan_learning=0,
                    vxlan_proxy=1,
                    mtu=op.mtu,
                ),
            )
            created = True
            try:
                host_link = await self._get_link(None, op.name)
                assert host_link is not None
                path = str(self.netns_dir / op.ns)
                await self._call(
                    "move vxlan",
                    f"{op.name} to {op.ns}",
                    lambda: host.link("set", index=host_link["index"], net_ns_fd=path),
                )
            except BaseException:
                # An orphaned VTEP would block this VNI for the next try.
                await self._delete_link(None, op.name)
                raise
            link = await self._get_link(op.ns, op.name)
            assert link is not None
        bridge = await self._get_link(op.ns, op.bridge)
        if bridge is None:
            raise KernelError("enslave vxlan", obj, errno.ENODEV, f"bridge {op.bridge} is missing")
        idx = link["index"]
        await self._call(
            "set vxlan",
            obj,
            lambda: ns_ipr.link("set", index=idx, master=bridge["index"], mtu=op.mtu, state="up"),
        )
        return created

    async def _ensure_veth(self, op: EnsureVeth) -> bool:
        obj = f"{op.container_name}/{op.ns}/{op.overlay_name}"
        host = await self._ipr(None)
        ns_ipr = await self._ipr(op.ns)
        overlay_end = await self._get_link(op.ns, op.overlay_name)
        created = False
        if overlay_end is None:
            await self._delete_link(None, op.container_name)
            path = str(self.netns_dir / op.ns)
            await self._call(
                "create veth",
                obj,
                lambda: host.link(
                    "add",
                    ifname=op.container_name,
                    kind="veth",
                    address=op.mac,
                    mtu=op.mtu,
                    peer={"ifname": op.overlay_name, "net_ns_fd": path, "mtu": op.mtu},
                ),
            )
            created = True
        try:
            overlay_end = await self._get_link(op.ns, op.overlay_name)
            assert overlay_end is not None
            bridge = await self._get_link(op.ns, op.bridge)
            if bridge is None:
                raise KernelError(
                    "enslave veth", obj, errno.ENODEV, f"bridge {op.bridge} is missing"
                )
            idx, br_idx = overlay_end["index"], bridge["index"]
            await self._call(
                "set veth",
                obj,
                lambda: ns_ipr.link("set", index=idx, master=br_idx, mtu=op.mtu, state="up"),
            )
        except BaseException:
            if created:  # the caller cannot undo what it does not know was made
                await self._delete_link(None, op.container_name)
            raise
        return created

    async def _delete_link(self, ns: str | None, name: str) -> bool:
        if ns is not None and not (self.netns_dir / ns).exists():
            return False
        ipr = await self._ipr(ns)
        try:
            await ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code in GONE:
                return False
            raise _kernel_error("delete link", f"{ns or 'host'}/{name}", exc) from exc
        return True

    # -- reading ---------------------------------------------------------

    async def _links(self, ns: str | None) -> dict[str, LinkView]:
        """Links with their IPv4/IPv6 addresses, from raw dumps (rtnl.py) in `ns` (None: ours)."""
        path = None if ns is None else self.netns_dir / ns
        try:
            links, addrs = await self._netlink.call(path, rtnl.links_and_addresses)
        except OSError as exc:
            raise KernelError("dump links", ns or "host", exc.errno or 0, str(exc)) from exc
        by_index: dict[int, list[IPv4Interface | IPv6Interface]] = {}
        for a in addrs:
            by_index.setdefault(a.index, []).append(ip_interface(f"{a.address}/{a.prefixlen}"))
        names = {link.index: link.name for link in links}
        return {
            link.name: LinkView(
                name=link.name,
                kind=link.kind,
                mtu=link.mtu or 0,
                up=link.up,
                master=names.get(link.master) if link.master else None,
                vni=link.vni,
                vxlan_port=link.vxlan_port,
                vxlan_local=link.vxlan_local,
                mac=link.mac,
                alias=link.alias,
                addresses=tuple(by_index.get(link.index, ())),
            )
            for link in links
        }

    async def snapshot(self) -> KernelSnapshot:
        namespaces: dict[str, NamespaceView] = {}
        names = sorted(os.listdir(self.netns_dir)) if self.netns_dir.is_dir() else []
        mounted = _mountpoints()
        for name in names:
            # a name whose file is not a mount here belongs to another mount
            # namespace (another Docker host on this machine): not ours to read
            if (
                not NAMESPACE_PATTERN.match(name)
                or str(self.netns_dir.resolve() / name) not in mounted
            ):
                continue
            try:
                links = await self._links(name)
            except PyoverlayError as exc:
                log.warning("cannot read namespace", ns=name, error=str(exc))
                continue
            namespaces[name] = NamespaceView(name, links)
        host = {
            n: link
            for n, link in (await self._links(None)).items()
            if n.startswith((VXLAN_PREFIX, VETH_CONTAINER_PREFIX))
        }
        return KernelSnapshot(namespaces, host)

    async def underlay(self, address: IPv4Address | None) -> UnderlayInfo:
        addrs = await self._dump(None, "addr", family=2)
        links = {m["index"]: m for m in await self._dump(None, "link")}

        def info(a: Any) -> UnderlayInfo:
            link = links[a["index"]]
            return UnderlayInfo(
                IPv4Address(a.get("IFA_ADDRESS")), link.get("IFLA_IFNAME"), link.get("IFLA_MTU")
            )

        if address is not None:
            for a in addrs:
                if a.get("IFA_ADDRESS") == str(address):
                    return info(a)
            raise InvalidOption(
                f"--advertise-addr {address} is not an address of any interface in this "
                "network namespace; give one of: "
                + (", ".join(sorted(_global_addresses(addrs))) or "(none)")
            )
        routes = await self._dump(None, "route", family=2, table=254)
        for r in routes:
            if r["dst_len"] == 0 and r.get("RTA_OIF"):
                src = r.get("RTA_PREFSRC")
                for a in addrs:
                    if a["index"] == r.get("RTA_OIF") and (
                        src is None or a.get("IFA_ADDRESS") == src
                    ):
                        return info(a)
        candidates = [
            a for a in addrs if a["scope"] == 0 and not _is_loopback(a.get("IFA_ADDRESS"))
        ]
        if len(candidates) == 1:
            return info(candidates[0])
        found = ", ".join(sorted(_global_addresses(addrs))) or "none"
        raise InvalidOption(
            "cannot derive the underlay (VTEP) address: no default route and "
            f"{'several' if candidates else 'no'} global IPv4 addresses ({found}); "
            "pass --advertise-addr ADDR or set PYOVERLAY_ADVERTISE_ADDR"
        )


def _is_loopback(a: str | None) -> bool:
    return a is None or ip_address(a).is_loopback


def _global_addresses(addrs: list[Any]) -> set[str]:
    return {
        str(a.get("IFA_ADDRESS"))
        for a in addrs
        if a["scope"] == 0 and not _is_loopback(a.get("IFA_ADDRESS"))
    }


def _vxlan_matches(link: Any, op: EnsureVxlan) -> bool:
    data = ("IFLA_LINKINFO", "IFLA_INFO_DATA")
    local = link.get_nested(*data, "IFLA_VXLAN_LOCAL")
    return bool(
        link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"
        and link.get_nested(*data, "IFLA_VXLAN_ID") == op.vni
        and link.get_nested(*data, "IFLA_VXLAN_PORT") == op.port
        and local == str(op.local)
    )
