"""The plugin's settings: each a command-line option and an env var PYOVERLAY_<NAME>.

The table SETTINGS is the single source for the argument parser, the env
lookup and the configuration reference in the README (`pyoverlay options`).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from pyoverlay.core.errors import InvalidOption
from pyoverlay.plugin.handshake import SCOPES

DEFAULT_SOCKET = "/run/docker/plugins/pyoverlay.sock"
# set (=1) by config.json: a managed plugin answers Docker with a settings error rather
# than exit (cli/main.py refuse_misconfigured)
MANAGED_ENV = "PYOVERLAY_MANAGED"


@dataclass(frozen=True)
class Setting:
    name: str  # option --name, env PYOVERLAY_NAME (dashes -> underscores, upper case)
    default: str
    help: str
    shown: str = ""  # how the default reads in docs when it is empty

    @property
    def default_text(self) -> str:
        return self.default or self.shown or "(none)"

    @property
    def env(self) -> str:
        return "PYOVERLAY_" + self.name.replace("-", "_").upper()

    @property
    def flag(self) -> str:
        return "--" + self.name


SETTINGS = (
    Setting(
        "socket",
        DEFAULT_SOCKET,
        "unix socket Docker connects to; the driver name is its basename without .sock",
    ),
    Setting("state-dir", "/var/lib/pyoverlay", "where networks, endpoints and pools are kept"),
    Setting(
        "advertise-addr",
        "",
        "underlay IPv4 address used as the local VTEP (default: the default route's source "
        "address, or the only global address)",
        shown="(derived)",
    ),
    Setting("vxlan-port", "4789", "UDP port of the VXLAN tunnels (the same on every host)"),
    Setting(
        "join",
        "",
        "gossip addresses of other pyoverlay hosts, ADDR[:PORT],...; any one live host is enough",
    ),
    Setting(
        "gossip-port",
        "7966",
        "UDP+TCP port of the gossip (not swarm's 7946, not VXLAN's 4789)",
    ),
    Setting(
        "gossip-key",
        "",
        "gossip encryption key: base64 of 16, 24 or 32 random bytes (openssl rand -base64 32); "
        "prefer --gossip-key-file or the env var: a command line is visible in `ps`",
    ),
    Setting(
        "gossip-key-file",
        "",
        "file (mode 0600) with one key per line; the first encrypts, all decrypt; a relative "
        "path is inside --state-dir; SIGHUP or `pyoverlay keys reload` re-reads it",
    ),
    Setting(
        "gossip-pushpull",
        "30",
        "seconds between full state exchanges with a random host (anti-entropy)",
    ),
    Setting(
        "gossip-probe-interval",
        "0.5",
        "seconds between failure-detection probes (one random host each), 0.5 to 2: crash "
        "detection scales with it (0.5: a crashed host's entries go ~3.5 s later on a few "
        "hosts); 1 halves gossip's idle packets and CPU",
    ),
    Setting(
        "reconcile-interval",
        "10",
        "seconds between comparisons of kernel state (links, FDB, ARP) with the tables",
    ),
    Setting(
        "scope",
        "local",
        "local: networks of standalone engines (create them on every host); global: swarm "
        "networks (managed plugin on every swarm node, `docker network create --scope swarm`)",
    ),
    Setting(
        "docker-host",
        "unix:///var/run/docker.sock",
        "dockerd's API socket, only read: which swarm service and VIP each local task has "
        "(scope global); none turns VIP load balancing off",
    ),
    Setting(
        "sandbox-dir",
        "/var/run/docker/netns",
        "where dockerd keeps container namespaces (its --exec-root/netns); VIP rules go there",
    ),
    Setting(
        "network-setup",
        "lazy",
        "lazy: a network's namespace, br0 and VTEP exist on this host, and it receives the "
        "network's endpoints, only while a local container is on it (as Docker's overlay); "
        "eager: from `network create` on, for every network",
    ),
    Setting(
        "ipsec-rotation",
        "43200",
        "seconds an IPsec SA of an encrypted network sends before a new key takes over "
        "(Docker's overlay: 12 h); also at every keyring change",
    ),
    Setting(
        "ipsec-rekey-packets",
        "2147483648",
        "packets an IPsec SA sends before a new key takes over, far below the 2^32 ESP "
        "sequence wrap (the kernel itself drops an SA at 2^32 - 2^16)",
    ),
    Setting(
        "vxlan-admission",
        "on",
        "on: VXLAN of pyoverlay's networks (their VNIs) from addresses that are not cluster "
        "members' VTEPs is dropped and counted (nft table inet pyoverlay_guard); Docker's own "
        "overlay and ingress on the same port pass; off: not checked",
    ),
    Setting("log-format", "console", "json or console"),
    Setting("log-level", "info", "debug, info, warning or error"),
)


@dataclass(frozen=True)
class PluginSettings:
    socket: Path
    state_dir: Path
    advertise_addr: IPv4Address | None
    vxlan_port: int
    log_format: str
    log_level: str
    join: tuple[str, ...] = ()
    gossip_port: int = 7966
    gossip_key: str = ""
    gossip_key_file: str = ""
    gossip_pushpull: float = 30.0
    gossip_probe_interval: float = 0.5
    reconcile_interval: float = 10.0
    scope: str = "local"
    docker_host: str = "unix:///var/run/docker.sock"
    sandbox_dir: Path = Path("/var/run/docker/netns")
    network_setup: str = "lazy"
    ipsec_rotation: float = 43200.0
    ipsec_rekey_packets: int = 2**31
    vxlan_admission: bool = True

    @property
    def docker_socket(self) -> Path | None:
        """The unix socket of --docker-host, or None when VIPs are off."""
        if self.docker_host == "none":
            return None
        return Path(self.docker_host.removeprefix("unix://"))

    @property
    def key_file(self) -> str:
        """--gossip-key-file; a relative path is inside --state-dir (for the managed plugin,
        whose state dir is a mount of the host's /var/lib/pyoverlay)."""
        if not self.gossip_key_file:
            return ""
        return str(self.state_dir / self.gossip_key_file)  # an absolute path stays as it is

    @property
    def driver_name(self) -> str:
        return self.socket.name.removesuffix(".sock")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        parser.add_argument(
            s.flag,
            default=os.environ.get(s.env, s.default),
            help=f"{s.help} [env {s.env}, default {s.default_text}]",
        )


def from_namespace(ns: argparse.Namespace) -> PluginSettings:
    addr_text = (ns.advertise_addr or "").strip()
    try:
        addr = IPv4Address(addr_text) if addr_text else None
    except ValueError:
        raise InvalidOption(
            f"--advertise-addr {addr_text!r} is not an IPv4 address (PYOVERLAY_ADVERTISE_ADDR)"
        ) from None
    port = _port("--vxlan-port", ns.vxlan_port)
    gossip_port = _port("--gossip-port", ns.gossip_port)
    if gossip_port == port:
        raise InvalidOption(f"--gossip-port {gossip_port} is the VXLAN port; pick another")
    join = tuple(j.strip() for j in ns.join.split(",") if j.strip())
    for j in join:
        host, _, p = j.rpartition(":") if ":" in j else (j, "", "")
        try:
            IPv4Address(host or j)
            if p:
                _port("--join", p)
        except ValueError:
            raise InvalidOption(
                f"--join {j!r}: give IPv4 addresses, ADDR[:PORT], comma-separated"
            ) from None
    if join and not (ns.gossip_key or ns.gossip_key_file):
        raise InvalidOption(
            "--join needs a shared key: --gossip-key or --gossip-key-file "
            "(the same on every host; make one with `openssl rand -base64 32`)"
        )
    if ns.scope not in SCOPES:
        raise InvalidOption(
            f"--scope {ns.scope!r} must be local (standalone engines) or global (swarm) "
            "(PYOVERLAY_SCOPE)"
        )
    if ns.docker_host != "none" and not ns.docker_host.startswith("unix:///"):
        raise InvalidOption(
            f"--docker-host {ns.docker_host!r} must be unix:///PATH (dockerd's local socket) "
            "or none (PYOVERLAY_DOCKER_HOST)"
        )
    if ns.network_setup not in ("lazy", "eager"):
        raise InvalidOption(
            f"--network-setup {ns.network_setup!r} must be lazy or eager (PYOVERLAY_NETWORK_SETUP)"
        )
    if ns.vxlan_admission not in ("on", "off"):
        raise InvalidOption(
            f"--vxlan-admission {ns.vxlan_admission!r} must be on or off "
            "(PYOVERLAY_VXLAN_ADMISSION)"
        )
    rotation = _number("--ipsec-rotation", ns.ipsec_rotation, 1, 7 * 86400)
    rekey = int(_number("--ipsec-rekey-packets", ns.ipsec_rekey_packets, 16, 2**31))
    if ns.log_format not in ("json", "console"):
        raise InvalidOption(f"--log-format {ns.log_format!r} must be json or console")
    if ns.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidOption(f"--log-level {ns.log_level!r} must be debug, info, warning or error")
    return PluginSettings(
        socket=Path(ns.socket),
        state_dir=Path(ns.state_dir),
        advertise_addr=addr,
        vxlan_port=port,
        log_format=ns.log_format,
        log_level=ns.log_level,
        join=join,
        gossip_port=gossip_port,
        gossip_key=ns.gossip_key,
        gossip_key_file=ns.gossip_key_file,
        gossip_pushpull=_seconds("--gossip-pushpull", ns.gossip_pushpull),
        gossip_probe_interval=_number("--gossip-probe-interval", ns.gossip_probe_interval, 0.5, 2),
        reconcile_interval=_seconds("--reconcile-interval", ns.reconcile_interval),
        scope=ns.scope,
        docker_host=ns.docker_host,
        sandbox_dir=Path(ns.sandbox_dir),
        network_setup=ns.network_setup,
        ipsec_rotation=rotation,
        ipsec_rekey_packets=rekey,
        vxlan_admission=ns.vxlan_admission == "on",
    )


def _port(flag: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise InvalidOption(f"{flag} {text!r} must be a port from 1 to 65535")
    return port


def _number(flag: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidOption(f"{flag} {text!r} must be a number from {low:g} to {high:g}")
    return value


def _seconds(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0.5 <= value <= 3600:
        raise InvalidOption(f"{flag} {text!r} must be a number of seconds from 0.5 to 3600")
    return value


def as_plugin_settings(message: str) -> str:
    """An error about options, worded for a managed plugin's user: each option is named
    as `docker plugin set` takes it (`--scope 'x' must be` reads `PYOVERLAY_SCOPE 'x'
    must be`), and an env name the message gives beside its option is not repeated."""
    for s in sorted(SETTINGS, key=lambda s: -len(s.flag)):
        message = message.replace(f" ({s.env})", "")
        message = re.sub(rf"{re.escape(s.flag)}(?![\w-])", s.env, message)
    return message
