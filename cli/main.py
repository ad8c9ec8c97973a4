"""`pyoverlay` entry point.

pyoverlay plugin [--socket ...]     run the Docker network + IPAM driver
pyoverlay status [--json]           what the state dir says: networks, endpoints, pools
pyoverlay options                   the settings table (markdown), for the README
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyoverlay.plugin import settings as plugin_settings
from pyoverlay.state.errors import PyoverlayError
from pyoverlay.state.store import JsonDocument


def _status(state_dir: Path, as_json: bool) -> int:
    driver = JsonDocument(state_dir / "driver.json").load()
    ipam = JsonDocument(state_dir / "ipam.json").load()
    nets = driver.get("networks") or {}
    eps = driver.get("endpoints") or {}
    pools = ipam.get("pools") or {}
    if as_json:
        print(json.dumps({"networks": nets, "endpoints": eps, "pools": pools}, indent=1))
        return 0
    print(f"state dir: {state_dir}")
    print(f"networks: {len(nets)}")
    for nid, n in sorted(nets.items()):
        count = sum(1 for e in eps.values() if e["network_id"] == nid)
        print(
            f"  {nid[:12]}  vni {n['vni']}  subnet {n['subnet']}  mtu {n['mtu']}  "
            f"ns 1-{nid[:10]}  endpoints {count}"
        )
    print(f"pools: {len(pools)}")
    for pid, pool in sorted(pools.items()):
        print(f"  {pid}  in use {len(pool['allocated'])}")
    return 0


def _options() -> int:
    print("| option | env | default | meaning |")
    print("|---|---|---|---|")
    for s in plugin_settings.SETTINGS:
        print(f"| `{s.flag}` | `{s.env}` | `{s.default or '(derived)'}` | {s.help} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyoverlay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_plugin = sub.add_parser("plugin", help="run the Docker network + IPAM driver")
    plugin_settings.add_arguments(p_plugin)
    p_status = sub.add_parser("status", help="networks, endpoints and pools in the state dir")
    p_status.add_argument(
        "--state-dir",
        default=os.environ.get("PYOVERLAY_STATE_DIR", "/var/lib/pyoverlay"),
    )
    p_status.add_argument("--json", action="store_true")
    sub.add_parser("options", help="print the plugin's settings as a markdown table")
    args = parser.parse_args(argv)
    try:
        if args.command == "plugin":
            from pyoverlay.plugin.server import run

            run(plugin_settings.from_namespace(args))
            return 0
        if args.command == "status":
            return _status(Path(args.state_dir), args.json)
        if args.command == "options":
            return _options()
    except PyoverlayError as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
