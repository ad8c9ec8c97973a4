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
   plugin` listens on it from its first instruction and answers Docker's
   handshake while steps 1-4 run (plugin/prebound.py, plugin/handshake.py), so
   dockerd's 12.5 s wait for the socket and 30 s wait for the capabilities hold
   on slow hosts too;
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
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from pyoverlay.core import logs
from pyoverlay.core.store import JsonDocument
from pyoverlay.core.tasks import TaskSet
from pyoverlay.driver.core.interfaces import Kernel
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.driver.servicelb.watcher import ServiceWatcher
from pyoverlay.ipam.cluster import ClusterGuard
from pyoverlay.plugin import prebound, wiring
from pyoverlay.plugin.admin import ADMIN_SOCKET, MEMBERS_FILE, make_admin_app
from pyoverlay.plugin.app import make_app
from pyoverlay.plugin.background import PeerSyncer
from pyoverlay.plugin.parts import Parts
from pyoverlay.plugin.settings import PluginSettings
from pyoverlay.plugin.syncgate import ipam_after_sync, prune_after_sync

log = structlog.get_logger("pyoverlay.server")
IPSEC_TICK = 1.0  # seconds between IPsec checks (rotation age, rekey packet count)


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


async def serve(settings: PluginSettings, kernel: Kernel | None = None) -> None:
    kernel = kernel or wiring.make_kernel()
    tasks = TaskSet()
    runners: list[web.AppRunner] = []
    admin_sock = settings.state_dir / ADMIN_SOCKET
    parts: Parts | None = None
    try:
        driver, ipam = await wiring.build(settings, kernel)
        parts = wiring.make_vips(settings, driver)
        parts.ipam = ipam
        syncer = PeerSyncer(driver, settings.reconcile_interval, parts.vips)
        gossip = parts.gossip = wiring.make_gossip(settings, parts, syncer)
        if gossip is not None:
            driver.directory = gossip
            driver.clustered = True
            guard = ClusterGuard(driver.node_id, gossip, ipam.save, ipam.save_async)
            guard.lend_hook, guard.unlend_hook = ipam.lend, ipam.unlend
            ipam.guard = guard
            ipam.load()  # again, now with the ownership part
            for name in guard.ownership.forgotten:
                gossip.forget(name)
            for kind, handler in guard.handlers().items():
                gossip.register_rpc(kind, handler)
            parts.keeper = await wiring.make_encryption(settings, driver, gossip)
            driver.encryption = syncer.keeper = parts.keeper
            if parts.keeper is not None:
                if parts.mesh is not None:
                    wiring.secure_mesh(parts.mesh, parts.keeper)
                await parts.keeper.sync()  # the guard rules before anything else
        driver.publish_joined()  # into the table before joining: our rows win over old ones
        driver.prune_peers = gossip is None
        ops, errors = await driver.reconcile()
        log.info("start-up reconcile", changes=len(ops), errors=len(errors))
        if gossip is not None:
            last = JsonDocument(settings.state_dir / MEMBERS_FILE)
            known = wiring.seeds(settings, last, driver.node_id)
            await gossip.start(known)
            gate = prune_after_sync(gossip, driver, parts.keeper, alone=not known)
            tasks.spawn("sync-gate", gate)
            if isinstance(ipam.guard, ClusterGuard):
                tasks.spawn("ipam-sync-gate", ipam_after_sync(gossip, ipam.guard, alone=not known))
        syncer.start(tasks)
        if parts.keeper is not None:
            tasks.spawn("ipsec", parts.keeper.run(IPSEC_TICK))
        if parts.docker is not None:
            watcher = ServiceWatcher(driver, parts.docker)
            driver.on_join = watcher.want
            watcher.start(tasks)
        if parts.mesh is not None:
            tasks.spawn("mesh", parts.mesh.run())
        parts.reload_keys = wiring.make_key_reloader(settings, parts)
        allocations = (
            SwarmAllocations(settings.state_dir / "swarm.json")
            if settings.scope == "global"
            else None
        )
        parts.swarm = allocations
        discovery = wiring.make_discovery(settings, driver, gossip)
        docker_app = make_app(driver, ipam, settings.scope, allocations, discovery)
        for app, path in ((docker_app, settings.socket), (make_admin_app(parts), admin_sock)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            early = prebound.take(path)  # listening since the process started
            if early is not None:
                await web.SockSite(runner, early.listener).start()
                await serve_waiting(runner, early)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            await web.UnixSite(runner, str(path)).start()
        log.info("serving", socket=str(settings.socket), driver=settings.driver_name)
        stop = asyncio.Event()
        install_stop_handlers(asyncio.get_running_loop(), stop)
        install_reload_handler(asyncio.get_running_loop(), parts.reload_keys)
        await stop.wait()
        log.info("stopping")
    finally:
        settings.socket.unlink(missing_ok=True)
        admin_sock.unlink(missing_ok=True)
        for runner in runners:
            await runner.cleanup()
        await tasks.close()
        if parts is not None and parts.docker is not None:
            await parts.docker.close()
        if parts is not None and parts.gossip is not None:
            # not a graceful leave: containers keep running while the plugin is
            # down, so other hosts must keep their entries until it is declared dead
            await parts.gossip.stop(leave=False)
        await kernel.close()
        if parts is not None and parts.vips is not None:
            parts.vips.tables.close()


async def serve_waiting(runner: web.AppRunner, early: prebound.Early) -> None:
    """Requests that came while starting up: the doorman answered the handshake and
    left the others unread on their connections; the server reads them now."""
    if early.answered:
        log.info("handshake answered while starting", method=",".join(early.answered))
    server = runner.server
    assert server is not None  # runner.setup() made it
    loop = asyncio.get_running_loop()
    for conn in early.waiting:
        await loop.connect_accepted_socket(server, conn)


def run(settings: PluginSettings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
