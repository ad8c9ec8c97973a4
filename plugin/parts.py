"""What one running plugin is made of: the subsystems wiring.py builds, handed to the
admin API and the background work as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.overlay.swarm import SwarmAllocations
from pyoverlay.driver.secure.keeper import Encryption
from pyoverlay.driver.servicelb.mesh import MeshKeeper
from pyoverlay.driver.servicelb.programmer import VipProgrammer
from pyoverlay.ipam.service import IpamService
from pyoverlay.plugin.docker_api import DockerApi


def no_reload() -> dict[str, object]:
    return {"error": "key reload is not available here"}


@dataclass
class Parts:
    driver: OverlayDriver
    ipam: IpamService | None = None
    gossip: GossipRuntime | None = None  # None: single host (no gossip key)
    keeper: Encryption | None = None  # IPsec + the VXLAN guard (clustered hosts)
    vips: VipProgrammer | None = None  # service VIP rules (swarm scope)
    docker: DockerApi | None = None  # the local dockerd, read only (swarm scope)
    mesh: MeshKeeper | None = None  # published ports on every node (swarm scope)
    swarm: SwarmAllocations | None = None  # the leader's VNIs and refusals (swarm scope)
    reload_keys: Callable[[], dict[str, object]] = no_reload
