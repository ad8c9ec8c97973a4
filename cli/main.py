"""`pyoverlay` entry point.

    pyoverlay plugin [--socket ...]       run the Docker network + IPAM driver
    pyoverlay status  [--json]            health, members, networks
    pyoverlay members [--json]            what the gossip knows about every host
    pyoverlay peers [NETWORK] [--json]    table rows next to programmed FDB/ARP entries
    pyoverlay reconcile [--dry-run]       what the reconciler would change / change it now
    pyoverlay diagram [NETWORK]           one host's data path drawn like the seed article
    pyoverlay leave                       leave the cluster gracefully (decommissioning a host)
    pyoverlay forget NODE                 remove a dead host for good (its address blocks return)
    pyoverlay keys reload                 re-read --gossip-key-file (live key rotation)
    pyoverlay options                     the settings table (markdown), for the README

The inspection commands talk to a running plugin through the admin socket
in its --state-dir (PYOVERLAY_STATE_DIR); `status` falls back to the state
files when the plugin is down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyoverlay.cli.commands import (
    admin,
    cmd_diagram,
    cmd_members,
    cmd_options,
    cmd_peers,
    cmd_reconcile,
    cmd_services,
    cmd_status,
)
from pyoverlay.core.errors import InvalidOption, PyoverlayError
from pyoverlay.plugin import settings as plugin_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pyoverlay", description="pyoverlay: " + __doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_plugin = sub.add_parser("plugin", help="run the Docker network + IPAM driver")
    plugin_settings.add_arguments(p_plugin)
    default_dir = os.environ.get("PYOVERLAY_STATE_DIR", "/var/lib/pyoverlay")
    for name, help_ in (
        ("status", "health, members and networks"),
        ("members", "what the gossip knows about every host"),
        ("peers", "table rows next to programmed FDB/ARP entries"),
        ("services", "swarm service VIPs, their tasks and each container's nftables rules"),
        ("reconcile", "compare the kernel with the tables and repair"),
        ("diagram", "one host's data path drawn like the seed article"),
        ("leave", "leave the cluster gracefully: others drop this host at once"),
        ("forget", "remove a dead host for good: its address blocks go back to the pool"),
        ("keys", "gossip keys: `keys reload` re-reads --gossip-key-file"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--state-dir", default=default_dir, help="the plugin's --state-dir")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("peers", "diagram", "services"):
            p.add_argument("network", nargs="?", default="", help="network ID (prefix)")
        if name == "reconcile":
            p.add_argument("--dry-run", action="store_true", help="only show what would change")
        if name == "forget":
            p.add_argument("node", help="the dead host's node id (`pyoverlay members`)")
        if name == "keys":
            p.add_argument("action", choices=["reload"], help="reload: re-read the key file")
    sub.add_parser("options", help="print the plugin's settings as a markdown table")
    args = parser.parse_args(argv)
    try:
        if args.command == "plugin":
            from pyoverlay.plugin.server import run

            try:
                settings = plugin_settings.from_namespace(args)
            except InvalidOption as exc:
                # a value that can never work (the check is pure: no state of the host);
                # what depends on the host at start (an address, the key file) exits,
                # and dockerd restarts the plugin: it may be there a moment later
                if os.environ.get(plugin_settings.MANAGED_ENV) != "1":
                    raise
                refuse_misconfigured(args, exc)
                return 0
            run(settings)
            return 0
        if args.command == "options":
            return cmd_options()
        state_dir = Path(args.state_dir)
        if args.command == "status":
            return cmd_status(state_dir, args.json)
        if args.command == "members":
            return cmd_members(state_dir, args.json)
        if args.command == "peers":
            return cmd_peers(state_dir, args.network, args.json)
        if args.command == "services":
            return cmd_services(state_dir, args.network, args.json)
        if args.command == "reconcile":
            return cmd_reconcile(state_dir, args.dry_run, args.json)
        if args.command == "diagram":
            return cmd_diagram(state_dir, args.network, args.json)
        if args.command == "leave":
            res = admin(state_dir, "POST", "/leave")
            print(json.dumps(res) if args.json else res.get("error") or f"left: {res['left']}")
            return 1 if "error" in res else 0
        if args.command == "forget":
            res = admin(state_dir, "POST", f"/forget?node={args.node}")
            print(json.dumps(res) if args.json else res.get("error") or f"forgot: {res['forgot']}")
            return 1 if "error" in res else 0
        if args.command == "keys":
            res = admin(state_dir, "POST", "/keys/reload")
            shown = res.get("error") or f"reloaded {res['keys']} key(s) from {res['file']}"
            print(json.dumps(res) if args.json else shown)
            return 1 if "error" in res else 0
    except PyoverlayError as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 2
    return 1


def refuse_misconfigured(args: argparse.Namespace, exc: InvalidOption) -> None:
    """A managed plugin whose settings are wrong stays up and says so to Docker (see
    prebound.refuse_until_stopped): every call is answered with the error, which names
    the setting as `docker plugin set` takes it, and how to fix it."""
    from pyoverlay.plugin import handshake, prebound

    error = (
        f"pyoverlay cannot start: {plugin_settings.as_plugin_settings(str(exc))}; fix it with "
        "`docker plugin disable PLUGIN`, `docker plugin set PLUGIN NAME=VALUE`, "
        "`docker plugin enable PLUGIN`"
    )
    print(error, file=sys.stderr, flush=True)  # dockerd's log, tagged with the plugin's id
    scope = args.scope if args.scope in handshake.SCOPES else "local"
    prebound.refuse_until_stopped(args.socket, handshake.answers(scope), error)


if __name__ == "__main__":
    sys.exit(main())
