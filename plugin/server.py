"""`pyoverlay plugin`: the composition root.

Start-up order:
1. settings and logging;
2. the underlay (advertise address and its MTU), a clear error if unknown;
3. this node's id (state-dir/node-id, made once), the driver and IPAM state;
4. reconcile: rebuild what the kernel lacks, remove what nothing owns -
   but in a cluster, no remote FDB/ARP entry is removed until gossip has
   synced (the sync gate below): the table is empty after a restart, and
   the entries in the kernel are what running containers use;
5. serve Docker on the unix socket (a stale socket file is replaced); `pyoverlay
   plugin` listens on it from its first instruction (plugin/prebound.py), so
   dockerd's 12.5 s wait for a managed plugin's socket holds on slow hosts too;
6. sync gate: at the first full state exchange with a live member (at once on
   a host that knows no other), entries the table no longer wants are removed,
   per network once its rows came, except towards hosts whose plugin is silent
   but whose kernel answers (cluster/hostcheck.py); and IPAM may claim new blocks.
On SIGTERM/SIGINT the socket is removed; namespaces, VTEPs and veths stay,
so running containers keep their traffic while the plugin is down.
SIGHUP re-reads --gossip-key-file (live key rotation).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import structlog
from aiohttp import web

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.keyring import Keyring, load_keys
from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.core import logs
from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.store import JsonDocument
from pyoverlay.core.tasks import TaskSet
from pyoverlay.driver.core.interfaces import Kernel, RuleTables
from pyoverlay.driver.core.model import Underlay
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.driver.secure.keeper import Encryption, Inputs
from pyoverlay.driver.servicelb.watcher import ServiceWatcher
from pyoverlay.ipam.cluster import ClusterGuard
from pyoverlay.ipam.service import IpamService
from pyoverlay.plugin import prebound
from pyoverlay.plugin.admin import ADMIN_SOCKET, MEMBERS_FILE, make_admin_app, members_view
from pyoverlay.plugin.app import make_app
from pyoverlay.plugin.background import PeerSyncer
from pyoverlay.plugin.docker_api import DockerApi
from pyoverlay.plugin.settings import PluginSettings

log = structlog.get_logger("pyoverlay.server")
LIFE_FILE = "gossip.json"  # this host's last gossip incarnation and replay epoch
IPSEC_TICK = 1.0  # seconds between IPsec checks (rotation age, rekey packet count)


def node_id(state_dir: Path) -> str:
    """A random id for this host's pyoverlay, kept across restarts."""
    path = state_dir / "node-id"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    text = secrets.token_hex(4)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return text


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop the server - but only in this process.

    pyroute2 forks short-lived children (to create namespaces and netns
    sockets) and stops them with SIGTERM.  loop.add_signal_handler() would
    make such a child's SIGTERM arrive in *our* loop (the wakeup fd is
    inherited), and the plugin would shut down at its first `network create`.
    A plain handler runs in the process that got the signal: a forked child
    simply exits.
    """
    main_pid = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def install_reload_handler(loop: asyncio.AbstractEventLoop, reload: Callable[[], object]) -> None:
    """SIGHUP re-reads the key file (same main-process rule as the stop handlers)."""
    main_pid = os.getpid()

    def on_hup(signum: int, frame: object) -> None:
        if os.getpid() == main_pid:
            loop.call_soon_threadsafe(reload)

    signal.signal(signal.SIGHUP, on_hup)


def last_members(last_known: JsonDocument, me: str) -> dict[str, tuple[str, str]]:
    """The other hosts of the last life that had not left: name -> (gossip addr, vtep)."""
    members = last_known.load().get("members") or []
    out = {}
    for m in members if isinstance(members, list) else []:
        if not isinstance(m, dict) or m.get("name") == me or m.get("status") == "left":
            continue
        addr, vtep = str(m.get("addr", "")), str(m.get("vtep", ""))
        if ":" in addr and vtep:
            out[str(m.get("name"))] = (addr, vtep)
    return out


def seeds(settings: PluginSettings, last_known: JsonDocument, me: str) -> list[str]:
    """--join, then every member we knew before a restart (so a host started without
    --join finds the cluster again at once, not at the next push-pull from others)."""
    out = list(settings.join)
    members = last_known.load().get("members") or []
    for m in members if isinstance(members, list) else []:
        addr = str(m.get("addr", "")) if isinstance(m, dict) else ""
        if addr and ":" in addr and m.get("name") != me and m.get("status") != "left":
            out.append(addr)
    return list(dict.fromkeys(out))


async def ipam_after_sync(gossip: GossipRuntime, guard: ClusterGuard, alone: bool) -> None:
    """IPAM claims wait for a real sync (no grace period): a host that cannot reach
    the cluster must never count itself as a majority of one."""
    if not alone or guard.ownership.voters - {guard.me}:
        await gossip.synced.wait()
    guard.synced = True
    log.info("ipam may claim blocks", voters=len(guard.voters()))


async def prune_after_sync(gossip: GossipRuntime, driver: OverlayDriver, alone: bool) -> None:
    """The sync gate: prune stale peer entries only once the table is the cluster's.

    A host that knows no other (no --join, no members from its last life) prunes at
    once. Any other waits for a first full exchange with a live host, however long:
    if the whole fleet restarts together, every table is empty until one answers, and
    entries pruned with such a table would cut every container off.
    Then each network waits for its own rows (directory.rows_complete)."""
    if not alone:
        if not gossip.synced.is_set():
            log.info("peer entries kept until a pyoverlay host answers")
        await gossip.synced.wait()
    driver.prune_peers = True
    if driver.encryption is not None:
        driver.encryption.prune = True
        driver.encryption.wake.set()
    ops, errors = await driver.reconcile()
    log.info("synced reconcile", changes=len(ops), errors=len(errors))


async def build(
    settings: PluginSettings, kernel: Kernel, tables: RuleTables | None = None
) -> tuple[OverlayDriver, IpamService]:
    info = await kernel.underlay(settings.advertise_addr)
    underlay = Underlay(info.address, settings.vxlan_port, info.mtu)
    nid = node_id(settings.state_dir)
    driver = OverlayDriver(
        kernel,
        settings.state_dir / "driver.json",
        nid,
        underlay,
        tables=tables,
        sandbox_dir=settings.sandbox_dir,
    )
    driver.eager = settings.network_setup == "eager"
    ipam = IpamService(settings.state_dir / "ipam.json")
    driver.load()
    ipam.load()
    log.info(
        "underlay",
        vtep=str(underlay.address),
        ifname=info.ifname,
        mtu=info.mtu,
        node=nid,
        networks=len(driver.networks),
        endpoints=len(driver.endpoints),
    )
    return driver, ipam


def make_gossip(
    settings: PluginSettings, driver: OverlayDriver, syncer: PeerSyncer
) -> GossipRuntime | None:
    keys = load_keys(settings.gossip_key or None, settings.key_file or None)
    if not keys:
        log.info("no gossip key: single-host mode (give --gossip-key and --join for a cluster)")
        return None
    if any(a == "--gossip-key" or a.startswith("--gossip-key=") for a in sys.argv):
        log.warning("--gossip-key on the command line is visible in `ps`; use --gossip-key-file")
    config = replace(GossipConfig.lan(), pushpull_interval=settings.gossip_pushpull)
    last_known = JsonDocument(settings.state_dir / MEMBERS_FILE)
    runtime: GossipRuntime | None = None

    def kept_changed() -> None:
        # a silent host's entries stay or go, and so does its place in the admission set
        syncer.on_kept()
        if driver.encryption is not None:
            driver.encryption.wake.set()

    def remember_members(events: object) -> None:
        # what `pyoverlay members` shows when the plugin is down
        if runtime is not None:
            last_known.save({"at": time.time(), "members": members_view(runtime, driver)})
        if driver.encryption is not None:
            driver.encryption.wake.set()  # the admission set follows the membership

    runtime = GossipRuntime(
        name=driver.node_id,
        bind_host=str(driver.underlay.address),
        port=settings.gossip_port,
        keyring=Keyring(keys),
        config=config,
        meta={"vtep": str(driver.underlay.address)},
        on_rows=syncer.on_rows,
        on_members=remember_members,
        life=JsonDocument(settings.state_dir / LIFE_FILE),
        expected=last_members(last_known, driver.node_id),
        on_kept=kept_changed,
    )
    return runtime


def make_discovery(
    settings: PluginSettings, driver: OverlayDriver, gossip: GossipRuntime | None
) -> Callable[[str, bool], None]:
    """DiscoverNew from swarm: other nodes become gossip seeds (so a swarm needs no --join);
    our own (Self) data-path address is checked against the VTEP address in use."""

    def discovered(addr: str, self_: bool) -> None:
        if self_:
            if addr != str(driver.underlay.address):
                log.warning(
                    "swarm's data-path address differs from the VTEP address in use; set "
                    "PYOVERLAY_ADVERTISE_ADDR if containers must use the former",
                    vtep=str(driver.underlay.address),
                    addr=addr,
                )
            return
        if gossip is None:
            log.warning("swarm node discovered, but gossip is off (no key)", addr=addr)
            return
        log.info("swarm node discovered", addr=addr)
        gossip.add_seed(f"{addr}:{settings.gossip_port}")

    return discovered


def make_key_reloader(
    settings: PluginSettings, gossip: GossipRuntime | None, driver: OverlayDriver
) -> Callable[[], dict[str, object]]:
    """What SIGHUP and `pyoverlay keys reload` do: re-read the keys, swap them in."""

    def reload() -> dict[str, object]:
        if gossip is None:
            return {"error": "single-host mode: no gossip keys to reload"}
        if not settings.key_file:
            return {"error": "keys came from PYOVERLAY_GOSSIP_KEY; reload needs --gossip-key-file"}
        try:
            keys = load_keys(None, settings.key_file)
        except PyoverlayError as exc:
            log.error("gossip keys not reloaded", error=str(exc))
            return {"error": str(exc)}
        gossip.reload_keys(keys)
        if driver.encryption is not None:
            driver.encryption.wake.set()  # a new first key: new IPsec SAs at once
        return {"keys": len(keys), "file": settings.key_file}

    return reload


async def make_encryption(
    settings: PluginSettings, driver: OverlayDriver, gossip: GossipRuntime
) -> Encryption | None:
    """IPsec for `-o encrypted` and the VXLAN guard table: clustered hosts only (the keys
    come from the cluster key); None if libnftables is missing (then -o encrypted is
    refused)."""
    from pyoverlay.driver.kernel.nft import Nft, NftError, available
    from pyoverlay.driver.kernel.xfrm import Xfrm

    try:
        available()
    except NftError as exc:
        log.error("encrypted networks and VXLAN admission off", error=str(exc))
        return None
    enc = Encryption(
        Xfrm(),
        Nft(),
        settings.state_dir / "ipsec.json",
        driver.underlay.address,
        driver.underlay.port,
        driver.node_id,
        rotation=settings.ipsec_rotation,
        rekey_packets=settings.ipsec_rekey_packets,
    )
    last = JsonDocument(settings.state_dir / MEMBERS_FILE).load().get("members") or []
    enc.admitted = {
        IPv4Address(m["vtep"]) for m in last if isinstance(m, dict) and _is_ipv4(m.get("vtep"))
    }

    def member_vteps() -> list[IPv4Address]:
        """Every member's VTEP (dead ones until forgotten), and those of hosts whose plugin
        is silent but whose kernel answers (their containers still send)."""
        vteps = [m.meta.get("vtep") for m in gossip.node.members.by_name.values()]
        vteps += gossip.kept_vteps()
        return sorted({IPv4Address(str(v)) for v in vteps if _is_ipv4(v)})

    enc.inputs = Inputs(
        ring=lambda: gossip.keyring.keys,
        members=member_vteps if settings.vxlan_admission else None,
        encrypted_vnis=lambda: [n.vni for n in driver.networks.values() if n.encrypted],
        vnis=lambda: [n.vni for n in driver.networks.values()],
        any_network=lambda: bool(driver.networks),
    )
    enc.directory = gossip
    await enc.start()
    return enc


def _is_ipv4(text: object) -> bool:
    try:
        IPv4Address(str(text))
    except ValueError:
        return False
    return True


def make_tables(settings: PluginSettings) -> RuleTables | None:
    """libnftables for service VIPs, when they are on (--docker-host) and it is installed."""
    if settings.scope != "global":
        return None  # VIPs are swarm services': standalone networks have none
    if settings.docker_socket is None:
        log.info("service VIPs off (--docker-host none)")
        return None
    from pyoverlay.driver.kernel.nft import Nft, NftError, available

    try:
        available()
    except NftError as exc:
        log.error("service VIPs off", error=str(exc))
        return None
    return Nft()


async def serve(
    settings: PluginSettings, kernel: Kernel | None = None, tables: RuleTables | None = None
) -> None:
    if kernel is None:
        from pyoverlay.driver.kernel.links import PyrouteKernel

        kernel = PyrouteKernel()
        tables = make_tables(settings)
    tasks = TaskSet()
    docker_api: DockerApi | None = None
    runners: list[web.AppRunner] = []
    gossip: GossipRuntime | None = None
    admin_sock = settings.state_dir / ADMIN_SOCKET
    try:
        driver, ipam = await build(settings, kernel, tables)
        syncer = PeerSyncer(driver, settings.reconcile_interval)
        gossip = make_gossip(settings, driver, syncer)
        if gossip is not None:
            driver.directory = gossip
            driver.clustered = True
            guard = ClusterGuard(driver.node_id, gossip, ipam.save)
            guard.lend_hook, guard.unlend_hook = ipam.lend, ipam.unlend
            ipam.guard = guard
            ipam.load()  # again, now with the ownership part
            for name in guard.ownership.forgotten:
                gossip.forget(name)
            for kind, handler in guard.handlers().items():
                gossip.register_rpc(kind, handler)
            driver.encryption = await make_encryption(settings, driver, gossip)
            if driver.encryption is not None:
                await driver.encryption.sync()  # the guard rules before anything else
        driver.publish_joined()  # into the table before joining: our rows win over old ones
        driver.prune_peers = gossip is None
        ops, errors = await driver.reconcile()
        log.info("start-up reconcile", changes=len(ops), errors=len(errors))
        if gossip is not None:
            known = seeds(settings, JsonDocument(settings.state_dir / MEMBERS_FILE), driver.node_id)
            await gossip.start(known)
            tasks.spawn("sync-gate", prune_after_sync(gossip, driver, alone=not known))
            if isinstance(ipam.guard, ClusterGuard):
                tasks.spawn("ipam-sync-gate", ipam_after_sync(gossip, ipam.guard, alone=not known))
        syncer.start(tasks)
        if driver.encryption is not None:
            tasks.spawn("ipsec", driver.encryption.run(IPSEC_TICK))
        if settings.scope == "global" and settings.docker_socket and driver.tables is not None:
            docker_api = DockerApi(settings.docker_socket)
            watcher = ServiceWatcher(driver, docker_api)
            driver.on_join = watcher.want
            watcher.start(tasks)
        reload_keys = make_key_reloader(settings, gossip, driver)
        allocations = (
            SwarmAllocations(settings.state_dir / "swarm.json")
            if settings.scope == "global"
            else None
        )
        docker_app = make_app(
            driver, ipam, settings.scope, allocations, make_discovery(settings, driver, gossip)
        )
        for app, path in (
            (docker_app, settings.socket),
            (make_admin_app(driver, gossip, reload_keys, ipam, docker_api), admin_sock),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            early = prebound.take(path)  # listening since the process started
            if early is not None:
                await web.SockSite(runner, early).start()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            await web.UnixSite(runner, str(path)).start()
        log.info("serving", socket=str(settings.socket), driver=settings.driver_name)
        stop = asyncio.Event()
        install_stop_handlers(asyncio.get_running_loop(), stop)
        install_reload_handler(asyncio.get_running_loop(), reload_keys)
        await stop.wait()
        log.info("stopping")
    finally:
        settings.socket.unlink(missing_ok=True)
        admin_sock.unlink(missing_ok=True)
        for runner in runners:
            await runner.cleanup()
        await tasks.close()
        if docker_api is not None:
            await docker_api.close()
        if gossip is not None:
            # not a graceful leave: containers keep running while the plugin is
            # down, so other hosts must keep their entries until it is declared dead
            await gossip.stop(leave=False)
        await kernel.close()
        if tables is not None:
            tables.close()


def run(settings: PluginSettings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
