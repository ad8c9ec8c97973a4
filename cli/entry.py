"""The `pyoverlay` command. For `pyoverlay plugin` it listens on Docker's socket
before anything heavy is imported (see pyoverlay.plugin.prebound); the rest is
pyoverlay.cli.main."""

from __future__ import annotations

import os
import sys

from pyoverlay.plugin import prebound
from pyoverlay.plugin.settings import DEFAULT_SOCKET


def socket_path(argv: list[str]) -> str:
    """--socket's value as argparse would read it (flag, flag=value, env, default)."""
    for i, arg in enumerate(argv):
        if arg == "--socket" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--socket="):
            return arg.removeprefix("--socket=")
    return os.environ.get("PYOVERLAY_SOCKET", DEFAULT_SOCKET)


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["plugin"] and not {"-h", "--help"} & set(argv):
        prebound.listen_early(socket_path(argv))
    from pyoverlay.cli.main import main as run

    return run()
