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
from pathlib import Path

import structlog
from aiohttp import web

from pyoverlay.driver.kernel import Kernel
from pyoverlay.driver.model import Underlay
from pyoverlay.driver.service import OverlayDriver
from pyoverlay.ipam.service import IpamService
from pyoverlay.state import logs

from .app import make_app
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


async def serve(settings: PluginSettings, kernel: Kernel | None = None) -> None:
    if kernel is None:
        from pyoverlay.driver.pyroute import PyrouteKernel

        kernel = PyrouteKernel()
    try:
        driver, ipam = await build(settings, kernel)
        ops, errors = await driver.reconcile()
        log.info("start-up reconcile", changes=len(ops), errors=len(errors))
        app = make_app(driver, ipam)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        settings.socket.parent.mkdir(parents=True, exist_ok=True)
        settings.socket.unlink(missing_ok=True)
        site = web.UnixSite(runner, str(settings.socket))
        await site.start()
        log.info("serving", socket=str(settings.socket), driver=settings.driver_name)
        stop = asyncio.Event()
        install_stop_handlers(asyncio.get_running_loop(), stop)
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            settings.socket.unlink(missing_ok=True)
            await runner.cleanup()
    finally:
        await kernel.close()


def run(settings: PluginSettings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
