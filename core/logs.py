"""structlog set-up, done once by the entry points (never by library code).

Fixed key vocabulary: method, nid, eid, vni, ns, ifname, mac, vtep, node,
op, error (see docs/design.md).

Debug and info lines go to stdout, warnings and errors to stderr: dockerd
files a managed plugin's stdout at level=info and its stderr at level=error,
so each line shows up in dockerd's log at its real level.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(fmt: str = "console", level: str = "info") -> None:
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=SplitLoggerFactory(),
        cache_logger_on_first_use=True,
    )


class SplitLogger:
    """A print logger that picks the stream by level (see the module docstring)."""

    def __init__(self) -> None:
        self._out = structlog.PrintLogger(sys.stdout)
        self._err = structlog.PrintLogger(sys.stderr)

    def debug(self, message: str) -> None:
        self._out.msg(message)

    info = debug

    def warning(self, message: str) -> None:
        self._err.msg(message)

    warn = error = critical = exception = msg = fatal = warning


class SplitLoggerFactory:
    def __call__(self, *args: object) -> SplitLogger:
        return SplitLogger()
