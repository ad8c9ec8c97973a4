"""The plugin's settings: each a command-line option and an env var PYOVERLAY_<NAME>.

The table SETTINGS is the single source for the argument parser, the env
lookup and the configuration reference in the README (`pyoverlay options`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from pyoverlay.state.errors import InvalidOption


@dataclass(frozen=True)
class Setting:
    name: str  # option --name, env PYOVERLAY_NAME (dashes -> underscores, upper case)
    default: str
    help: str

    @property
    def env(self) -> str:
        return "PYOVERLAY_" + self.name.replace("-", "_").upper()

    @property
    def flag(self) -> str:
        return "--" + self.name


SETTINGS = (
    Setting(
        "socket",
        "/run/docker/plugins/pyoverlay.sock",
        "unix socket Docker connects to; the driver name is its basename without .sock",
    ),
    Setting("state-dir", "/var/lib/pyoverlay", "where networks, endpoints and pools are kept"),
    Setting(
        "advertise-addr",
        "",
        "underlay IPv4 address used as the local VTEP (default: the default route's source "
        "address, or the only global address)",
    ),
    Setting("vxlan-port", "4789", "UDP port of the VXLAN tunnels (the same on every host)"),
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

    @property
    def driver_name(self) -> str:
        return self.socket.name.removesuffix(".sock")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        parser.add_argument(
            s.flag,
            default=os.environ.get(s.env, s.default),
            help=f"{s.help} [env {s.env}, default {s.default or 'derived'}]",
        )


def from_namespace(ns: argparse.Namespace) -> PluginSettings:
    addr_text = (ns.advertise_addr or "").strip()
    try:
        addr = IPv4Address(addr_text) if addr_text else None
    except ValueError:
        raise InvalidOption(
            f"--advertise-addr {addr_text!r} is not an IPv4 address (PYOVERLAY_ADVERTISE_ADDR)"
        ) from None
    try:
        port = int(ns.vxlan_port)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise InvalidOption(f"--vxlan-port {ns.vxlan_port!r} must be a UDP port from 1 to 65535")
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
    )
