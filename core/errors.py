"""The error tree. Every error says what failed, on which object, and how to fix it.

Errors are raised deep inside and rendered once, at the HTTP boundary
(pyoverlay.plugin.errors): a NetworkDriver call answers {"Err": str(e)}, an
IpamDriver call {"Error": str(e)}.  Docker shows that text to the user as
`Error response from daemon: remote: <text>`, so it must read well on its own.
"""

from __future__ import annotations


class PyoverlayError(Exception):
    """Base of every error pyoverlay reports to Docker or to the CLI."""


class InvalidOption(PyoverlayError):
    """The user gave an option or value pyoverlay cannot accept (names the field and the fix)."""


class NotFound(PyoverlayError):
    """An ID Docker sent is unknown to this plugin."""


class Conflict(PyoverlayError):
    """The request collides with something that exists (address taken, VNI in use...)."""


class Exhausted(PyoverlayError):
    """No free address or pool is left."""


class KernelError(PyoverlayError):
    """A netlink operation failed; carries the op, the object, errno and the kernel's text."""

    def __init__(self, op: str, obj: str, errno: int, text: str) -> None:
        self.op = op
        self.obj = obj
        self.errno = errno
        self.text = text
        super().__init__(f"{op} {obj}: {text} (errno {errno})")


class StateError(PyoverlayError):
    """The state file cannot be read or written."""
