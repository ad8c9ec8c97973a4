"""ADAPTER: run blocking work inside another network namespace, on a dedicated thread.

setns(2) changes the namespace of the calling thread only, so work that must
talk to a namespace's own sockets (libnftables, a raw netlink socket) runs
on one thread of ours: it enters the namespace (by the file Docker gave as
SandboxKey, or /run/netns/<name>), runs the work, and returns to the
plugin's namespace.  No other code runs on that thread, so a failure half-way
never leaves plugin work in someone else's namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pyoverlay.core.errors import PyoverlayError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)  # os.setns is Python 3.12+; Debian 12 has 3.11


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetnsThread:
    def __init__(self, name: str, error: type[PyoverlayError] = PyoverlayError) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._home: int | None = None
        self._error = error

    def _enter(self, netns: Path | None) -> None:
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if netns is None:
            _setns(self._home)
            return
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(f"namespace {netns}: {exc.strerror}") from exc
        try:
            _setns(fd)
        except OSError as exc:
            raise self._error(f"namespace {netns}: setns: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def _in(self, netns: Path | None, work: Callable[[], T]) -> T:
        try:
            self._enter(netns)
            return work()
        finally:
            if netns is not None and self._home is not None:
                _setns(self._home)

    async def call(self, netns: Path | None, work: Callable[[], T]) -> T:
        """Run work() in `netns` (None: the plugin's own) on the dedicated thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._in, netns, work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._home is not None:
            os.close(self._home)
            self._home = None
