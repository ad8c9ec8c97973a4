"""Wiring: the one place that builds the plugin's parts from its settings, and the only
module that imports the kernel adapters (pyoverlay.driver.kernel.*), which
scripts/check enforces.

    build()             the overlay driver and IPAM on their state files, the underlay
    make_gossip()       the gossip runtime (None without a key: single host)
    make_encryption()   the IPsec keeper and the VXLAN guard (clustered hosts)
    make_vips()         the service VIP programmer, the routing mesh and the dockerd
                        reader (swarm scope)
    make_discovery()    swarm's DiscoverNew -> gossip seeds
    make_key_reloader() SIGHUP / `pyoverlay keys reload`
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import structlog

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.keyring import Keyring, load_keys
from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.store import JsonDocument
from pyoverlay.driver.core.interfaces import Kernel, RuleTables
from pyoverlay.driver.core.model import Underlay
from pyoverlay.driver.overlay.driver import OverlayDriver
from pyoverlay.driver.secure.keeper import Encryption, Inputs
from pyoverlay.driver.servicelb.mesh import MeshKeeper
from pyoverlay.driver.servicelb.programmer import VipProgrammer
from pyoverlay.ipam.service import IpamService
from pyoverlay.plugin.admin import MEMBERS_FILE
from pyoverlay.plugin.background import PeerSyncer
from pyoverlay.plugin.docker_api import DockerApi
from pyoverlay.plugin.parts import Parts
from pyoverlay.plugin.settings import PluginSettings
from pyoverlay.plugin.views import members_view

log = structlog.get_logger("pyoverlay.server")
LIFE_FILE = "gossip.json"  # this host's last gossip incarnation and replay epoch


def make_kernel() -> Kernel:
    """The real netlink adapter (pyroute2 for links, raw rtnetlink for entries in bulk)."""
    from pyoverlay.driver.kernel.links import PyrouteKernel

    return PyrouteKernel()


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


async def build(settings: PluginSettings, kernel: Kernel) -> tuple[OverlayDriver, IpamService]:
    info = await kernel.underlay(settings.advertise_addr)
    underlay = Underlay(info.address, settings.vxlan_port, info.mtu)
    nid = node_id(settings.state_dir)
    driver = OverlayDriver(
        kernel,
        settings.state_dir / "driver.json",
        nid,
        underlay,
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


def make_gossip(settings: PluginSettings, parts: Parts, syncer: PeerSyncer) -> GossipRuntime | None:
    keys = load_keys(settings.gossip_key or None, settings.key_file or None)
    if not keys:
        log.info("no gossip key: single-host mode (give --gossip-key and --join for a cluster)")
        return None
    if any(a == "--gossip-key" or a.startswith("--gossip-key=") for a in sys.argv):
        log.warning("--gossip-key on the command line is visible in `ps`; use --gossip-key-file")
    driver = parts.driver
    config = replace(
        GossipConfig.lan(),
        pushpull_interval=settings.gossip_pushpull,
        probe_interval=settings.gossip_probe_interval,
    )
    last_known = JsonDocument(settings.state_dir / MEMBERS_FILE)
    runtime: GossipRuntime | None = None

    def kept_changed() -> None:
        # a silent host's entries stay or go, and so does its place in the admission set
        syncer.on_kept()
        if parts.keeper is not None:
            parts.keeper.wake.set()

    def remember_members(events: object) -> None:
        # what `pyoverlay members` shows when the plugin is down
        if runtime is not None:
            last_known.save({"at": time.time(), "members": members_view(runtime, driver)})
        if parts.keeper is not None:
            parts.keeper.wake.set()  # the admission set follows the membership

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


def make_key_reloader(settings: PluginSettings, parts: Parts) -> Callable[[], dict[str, object]]:
    """What SIGHUP and `pyoverlay keys reload` do: re-read the keys, swap them in."""

    def reload() -> dict[str, object]:
        gossip = parts.gossip
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
        if parts.keeper is not None:
            parts.keeper.wake.set()  # a new first key: new IPsec SAs at once
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


def secure_mesh(mesh: MeshKeeper, keeper: Encryption) -> None:
    """The routing mesh's hop for services on encrypted networks goes ESP with the
    keeper's SAs: the keeper learns when that hop exists, the mesh whether it can be."""

    def esp() -> str | None:
        if keeper.unsupported:
            return "this kernel cannot do ESP"
        return None if keeper.inputs.ring() else "no cluster key is set"

    mesh.esp = esp
    mesh.on_secure = keeper.wake.set
    keeper.inputs.mesh = mesh.secure_hop


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


def make_vips(settings: PluginSettings, driver: OverlayDriver) -> Parts:
    """Service VIPs (swarm scope, dockerd readable, libnftables present): the programmer,
    hooked into the driver, and the dockerd reader; else neither."""
    tables = make_tables(settings)
    if tables is None or settings.docker_socket is None:
        return Parts(driver)
    programmer = VipProgrammer(driver, tables, settings.sandbox_dir)
    driver.services = programmer
    docker = DockerApi(settings.docker_socket)
    from pyoverlay.driver.kernel import procnet

    mesh = MeshKeeper(driver, tables, docker, driver.underlay.address, procnet.listening)
    return Parts(driver, vips=programmer, docker=docker, mesh=mesh)
