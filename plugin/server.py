"""`pyoverlay plugin`: the composition root.

Start-up order:
1. settings and logging;
2. the underlay (advertise address and its MTU), a clear error if unknown;
3. this node's id (state-dir/node-id, made once), the driver and IPAM state;
4. reconcile: rebuild what the kernel lacks, remove what nothing owns;
5. serve Docker on the unix socket (a stale socket file is replaced).
On SIGTERM/SIGINT the socket is removed; namespaces, VTEPs and veths stay,
so running containers keep their traffic while the plugin is down.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.keyring import Keyring, load_keys
from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.driver.kernel import Kernel
from pyoverlay.driver.model import Underlay
from pyoverlay.driver.service import OverlayDriver
from pyoverlay.ipam.cluster import CLAIM, RELEASE, ClusterGuard
from pyoverlay.ipam.service import IpamService
from pyoverlay.state import logs
from pyoverlay.state.store import JsonDocument
from pyoverlay.state.tasks import TaskSet

from .admin import ADMIN_SOCKET, MEMBERS_FILE, make_admin_app, members_view
from .app import make_app
from .background import PeerSyncer
from .settings import PluginSettings

log = structlog.get_logger("pyoverlay.server")


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


async def build(settings: PluginSettings, kernel: Kernel) -> tuple[OverlayDriver, IpamService]:
    info = await kernel.underlay(settings.advertise_addr)
    underlay = Underlay(info.address, settings.vxlan_port, info.mtu)
    nid = node_id(settings.state_dir)
    driver = OverlayDriver(kernel, settings.state_dir / "driver.json", nid, underlay)
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
    keys = load_keys(settings.gossip_key or None, settings.gossip_key_file or None)
    if not keys:
        log.info("no gossip key: single-host mode (give --gossip-key and --join for a cluster)")
        return None
    config = replace(GossipConfig.lan(), pushpull_interval=settings.gossip_pushpull)
    last_known = JsonDocument(settings.state_dir / MEMBERS_FILE)
    runtime: GossipRuntime | None = None

    def remember_members(events: object) -> None:
        # what `pyoverlay members` shows when the plugin is down
        if runtime is not None:
            last_known.save({"at": time.time(), "members": members_view(runtime, driver)})

    runtime = GossipRuntime(
        name=driver.node_id,
        bind_host=str(driver.underlay.address),
        port=settings.gossip_port,
        keyring=Keyring(keys),
        config=config,
        meta={"vtep": str(driver.underlay.address)},
        on_rows=syncer.on_rows,
        on_members=remember_members,
    )
    return runtime


async def serve(settings: PluginSettings, kernel: Kernel | None = None) -> None:
    if kernel is None:
        from pyoverlay.driver.pyroute import PyrouteKernel

        kernel = PyrouteKernel()
    tasks = TaskSet()
    runners: list[web.AppRunner] = []
    gossip: GossipRuntime | None = None
    admin_sock = settings.state_dir / ADMIN_SOCKET
    try:
        driver, ipam = await build(settings, kernel)
        syncer = PeerSyncer(driver, settings.reconcile_interval)
        gossip = make_gossip(settings, driver, syncer)
        if gossip is not None:
            driver.directory = gossip
            guard = ClusterGuard(driver.node_id, gossip, ipam.save)
            ipam.guard = guard
            ipam.load()  # again, now with the ownership part
            gossip.register_rpc(CLAIM, guard.handle_claim)
            gossip.register_rpc(RELEASE, guard.handle_release)
        driver.publish_joined()  # into the table before joining: our rows win over old ones
        ops, errors = await driver.reconcile()
        log.info("start-up reconcile", changes=len(ops), errors=len(errors))
        if gossip is not None:
            await gossip.start(settings.join)
        syncer.start(tasks)
        for app, path in (
            (make_app(driver, ipam), settings.socket),
            (make_admin_app(driver, gossip), admin_sock),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            await web.UnixSite(runner, str(path)).start()
        log.info("serving", socket=str(settings.socket), driver=settings.driver_name)
        stop = asyncio.Event()
        install_stop_handlers(asyncio.get_running_loop(), stop)
        await stop.wait()
        log.info("stopping")
    finally:
        settings.socket.unlink(missing_ok=True)
        admin_sock.unlink(missing_ok=True)
        for runner in runners:
            await runner.cleanup()
        await tasks.close()
        if gossip is not None:
            # not a graceful leave: containers keep running while the plugin is
            # down, so other hosts must keep their entries until it is declared dead
            await gossip.stop(leave=False)
        await kernel.close()


def run(settings: PluginSettings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
