"""Docker's socket, listening - and answering the handshake - before the heavy imports.

dockerd gives a managed plugin about 12.5 s to make its socket (0.5 s, then four
dials 3 s apart) and then kills it; then it waits at most 30 s for each call, and
a GetCapabilities that times out is never asked again (plugin/handshake.py). On a
busy emulated VM, importing aiohttp, pydantic and pyroute2 took 7 s and exec to
serving took over 30 s. So `pyoverlay plugin` (stdlib only, `listen_early`):

- binds and listens at once: Docker's dial succeeds;
- a doorman thread accepts, peeks at each request without reading it, and
  answers the four handshake calls (their answers depend on --scope alone),
  one request per connection (Connection: close);
- any other request (CreateNetwork, Join...) stays unread on its connection;
  the server takes the listening socket and those connections over (`take`)
  and answers them once start-up is done.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyoverlay.plugin.handshake import CONTENT_TYPE

MAX_HEAD = 16 * 1024  # a handshake request is ~200 bytes; anything longer is the server's
# while refusing (misconfigured): a request must be whole within MAX_HEAD (Docker's are a
# few KiB) and within REFUSING_WAIT seconds; at most REFUSING_CONNS are watched at once
REFUSING_WAIT = 10.0
REFUSING_CONNS = 64
POLL = 0.02  # seconds between looks at a connection whose request is not complete yet


@dataclass
class Early:
    """What the server takes over: the listening socket, connections whose request the
    doorman left for it (unread), and which calls were already answered."""

    listener: socket.socket
    waiting: list[socket.socket] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)


class _Doorman(threading.Thread):
    """Answers the handshake on `early.listener` until `stop()`."""

    def __init__(
        self, early: Early, answers: dict[str, dict[str, object]], refusal: str | None = None
    ) -> None:
        super().__init__(name="pyoverlay-doorman", daemon=True)
        self.early = early
        self.answers = answers
        self.refusal = refusal  # set: every other call gets it as Docker's error
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        # accepted, request not complete yet (and any a refusing doorman inherits), with
        # when each was taken on
        now = time.monotonic()
        watching: dict[socket.socket, float] = {c: now for c in self.early.waiting}
        self.early.waiting.clear()
        with selectors.DefaultSelector() as sel:
            sel.register(self.early.listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                ready = sel.select(timeout=POLL if watching else None)
                if self._stopping:
                    break
                now = time.monotonic()
                if any(key.fileobj is self.early.listener for key, _ in ready):
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        conn, _ = self.early.listener.accept()
                        conn.setblocking(False)
                        if self.refusal is not None and len(watching) >= REFUSING_CONNS:
                            conn.close()  # refusing: a bounded number of callers at once
                        else:
                            watching[conn] = now
                for conn, since in list(watching.items()):
                    verdict = self._look(conn)
                    if verdict == "wait" and self.refusal is not None:
                        if now - since > REFUSING_WAIT:
                            conn.close()  # an idle or half-sent request: not waited for
                            verdict = "done"
                    if verdict != "wait":
                        del watching[conn]
                    if verdict == "server":
                        self.early.waiting.append(conn)
        self.early.waiting.extend(watching)

    def _look(self, conn: socket.socket) -> str:
        """wait (request incomplete), done (answered or gone) or server (not ours)."""
        try:
            data = conn.recv(MAX_HEAD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return "wait"
        except OSError:
            conn.close()
            return "done"
        if not data:
            conn.close()  # the client gave up
            return "done"
        end = data.find(b"\r\n\r\n")
        request = _parse_head(data[:end]) if end >= 0 else None
        total = end + 4 + (request[1] if request else 0)
        ours = request is not None and request[0] in self.answers and total <= MAX_HEAD
        if not ours and self.refusal is None:
            return "wait" if end < 0 and len(data) < MAX_HEAD else "server"
        if end < 0 or len(data) < total:  # (whole requests only, all within MAX_HEAD)
            if len(data) < MAX_HEAD and total <= MAX_HEAD:
                return "wait"
            conn.close()  # refusing: a request this large is no Docker call
            return "done"
        if ours and request is not None:
            status, body = b"200 OK", json.dumps(self.answers[request[0]])
        else:
            status, body = b"500 Internal Server Error", json.dumps({"Err": self.refusal})
        try:
            # the whole request is in the socket's buffer: read without waiting (unread
            # bytes at close would reset the client), then answer and close
            _read_exactly(conn, total)
            conn.setblocking(True)
            conn.settimeout(5)
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + CONTENT_TYPE.encode() + b"\r\n"
                b"Content-Length: " + str(len(body.encode())).encode() + b"\r\n"
                b"Connection: close\r\n\r\n" + body.encode()
            )
            if ours and request is not None:
                self.early.answered.append(request[0].lstrip("/"))
        except OSError:
            pass
        conn.close()
        return "done"


def _parse_head(head: bytes) -> tuple[str, int] | None:
    """(path, body length) of a POST with a Content-Length (or none); None otherwise."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST":
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding":
            return None
        if name == "content-length":
            if not value.strip().isdigit():
                return None
            length = int(value.strip())
    return parts[1], length


def _read_exactly(conn: socket.socket, n: int) -> None:
    while n > 0:
        chunk = conn.recv(n)
        if not chunk:
            raise ConnectionError("closed mid-request")
        n -= len(chunk)


_early: dict[str, tuple[Early, _Doorman | None]] = {}


def listen_early(path: str, answers: dict[str, dict[str, object]] | None = None) -> None:
    """Bind and listen on `path` (a stale socket file is replaced); with `answers`, a
    doorman answers those calls until the server takes over. If the server never
    does (bad options, a crash during start-up), the socket file goes at exit."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    early = Early(sock)
    doorman = None
    if answers:
        sock.setblocking(False)
        doorman = _Doorman(early, answers)
        doorman.start()
    _early[path] = (early, doorman)
    atexit.register(_forget, path)


def refuse_until_stopped(path: str, answers: dict[str, dict[str, object]], error: str) -> None:
    """The plugin cannot start on its own settings: answer Docker's handshake (so the
    driver is registered and `docker plugin enable` returns) and every other call with
    `error`, which Docker shows to the user (`docker network create` prints it), until
    SIGTERM (`docker plugin disable`). Without this a managed plugin only exits: dockerd
    restarts it and the user reads "could not resolve driver" or a failed dial."""
    # the stop signals are waited for (sigwait), not handled: blocked before the doorman
    # thread starts, so it inherits the mask and only this thread receives them
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    early = take(Path(path))
    if early is None:  # nobody listened early (not `pyoverlay plugin`): listen now
        listen_early(path)
        early = take(Path(path))
    assert early is not None  # its unanswered requests are refused too
    for conn in early.waiting:
        conn.setblocking(False)
    early.listener.setblocking(False)
    doorman = _Doorman(early, answers, refusal=error)
    _early[path] = (early, doorman)
    doorman.start()
    signal.sigwait(stops)


def take(path: Path) -> Early | None:
    """The early socket for `path` and the connections waiting on it, if `pyoverlay
    plugin` made one; the doorman has stopped; the caller owns every socket."""
    entry = _early.pop(str(path), None)
    if entry is None:
        return None
    early, doorman = entry
    if doorman is not None:
        doorman.stop()
    early.listener.setblocking(True)
    return early


def _forget(path: str) -> None:
    early = take(Path(path))
    if early is not None:
        for conn in (early.listener, *early.waiting):
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
