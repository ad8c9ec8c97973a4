"""The `pyoverlay` command. For `pyoverlay plugin` it listens on Docker's socket and
answers Docker's handshake before anything heavy is imported (see
pyoverlay.plugin.prebound); the rest is pyoverlay.cli.main."""

from __future__ import annotations

import os
import sys

from pyoverlay.plugin import handshake, prebound
from pyoverlay.plugin.settings import SETTINGS


def early_value(argv: list[str], name: str) -> str:
    """A setting's value as argparse would read it (flag, flag=value, env, default)."""
    setting = next(s for s in SETTINGS if s.name == name)
    for i, arg in enumerate(argv):
        if arg == setting.flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(setting.flag + "="):
            return arg.removeprefix(setting.flag + "=")
    return os.environ.get(setting.env, setting.default)


def socket_path(argv: list[str]) -> str:
    return early_value(argv, "socket")


def start_early(argv: list[str]) -> None:
    """For `pyoverlay plugin`: listen on Docker's socket and answer its handshake."""
    if argv[:1] == ["plugin"] and not {"-h", "--help"} & set(argv):
        scope = early_value(argv, "scope")
        # an invalid --scope gets no early answer: the plugin stops with its error anyway
        answers = handshake.answers(scope) if scope in handshake.SCOPES else None
        prebound.listen_early(socket_path(argv), answers)


def main() -> int:
    start_early(sys.argv[1:])
    from pyoverlay.cli.main import main as run

    return run()
