"""make_app(): the aiohttp application Docker talks to."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.ipam.service import IpamService
from pyoverlay.plugin.errors import docker_errors
from pyoverlay.plugin.handlers import DISCOVER, DRIVER, IPAM, ROUTES, SCOPE, SWARM


def ignore_discovery(addr: str, self_: bool) -> None:
    return None


def make_app(
    driver: OverlayDriver,
    ipam: IpamService,
    scope: str = "local",
    allocations: SwarmAllocations | None = None,
    on_discover: Callable[[str, bool], None] = ignore_discovery,
) -> web.Application:
    app = web.Application(middlewares=[docker_errors])
    app[DRIVER] = driver
    app[IPAM] = ipam
    app[SCOPE] = scope
    app[SWARM] = allocations
    app[DISCOVER] = on_discover
    for path, handler in ROUTES.items():
        app.router.add_post(path, handler)
    return app
