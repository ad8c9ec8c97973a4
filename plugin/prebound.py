"""Docker's socket, listening before the plugin's heavy imports.

dockerd gives a managed plugin about 12.5 s to make its socket (0.5 s, then
four dials 3 s apart) and then kills it. On a slow host (a VM under software
emulation) importing aiohttp, pydantic and pyroute2 alone takes 7 s, and the
start-up reconcile and the gossip join come on top. `pyoverlay plugin` therefore
binds and listens first (stdlib only, `listen_early`); Docker's dial succeeds at
once and its first request waits in the backlog until the server takes the
socket over (`take`) and answers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
from pathlib import Path

_early: dict[str, socket.socket] = {}


def listen_early(path: str) -> None:
    """Bind and listen on `path` (a stale socket file is replaced). If the server never
    takes it (bad options, a crash during start-up), the file goes at exit."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    _early[path] = sock
    atexit.register(_forget, path)


def take(path: Path) -> socket.socket | None:
    """The early socket for `path`, if `pyoverlay plugin` made one; the caller owns it."""
    return _early.pop(str(path), None)


def _forget(path: str) -> None:
    sock = _early.pop(path, None)
    if sock is not None:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
