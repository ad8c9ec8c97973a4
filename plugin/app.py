"""make_app(): the aiohttp application Docker talks to."""

from __future__ import annotations

from aiohttp import web

from pyoverlay.driver.service import OverlayDriver
from pyoverlay.ipam.service import IpamService

from .errors import docker_errors
from .handlers import DRIVER, IPAM, ROUTES


def make_app(driver: OverlayDriver, ipam: IpamService) -> web.Application:
    app = web.Application(middlewares=[docker_errors])
    app[DRIVER] = driver
    app[IPAM] = ipam
    for path, handler in ROUTES.items():
        app.router.add_post(path, handler)
    return app
