"""When a new container becomes reachable from another host, read from that host's kernel.

The first `reach` probe pinged the new address in a loop, each try a fork of
nsenter and a `ping -W 0.1`: a try that started just before the entry
appeared failed after 100 ms, so the figure carried up to ~130 ms of probe
delay (it read "median +1.6 ms, min -66, max +17.6" after `docker run`
returned). Here the receiving host's overlay namespace is watched with
`ip -ts monitor neigh` from before the run: the time the VTEP got the new
address's neighbour entry is exact to the microsecond and costs the run nothing.
That entry is what makes the container reachable from there (the FDB entry
comes in the same batch, its local side was ready before `docker run` returned).
Docker's overlay programs the same kind of entry in its own namespace, so both
drivers are measured the same way.
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime

from lab.hosts import Host


def stamp(line: str) -> float | None:
    """`[2026-12-05T15:34:07.190536] ...` (local time, as `ip -ts` prints it) -> epoch."""
    if not line.startswith("[") or "]" not in line:
        return None
    try:
        return datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
    except ValueError:
        return None


class NeighWatch:
    """`ip -ts monitor neigh` in network namespace `ns_path` of host `h`, from now on."""

    def __init__(self, h: Host, ns_path: str) -> None:
        self.proc = h.popen("nsenter", f"--net={ns_path}", "ip", "-ts", "monitor", "neigh")
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def added(self, ip: str, timeout: float) -> float | None:
        """When `ip` got a neighbour entry (epoch), waiting at most `timeout` for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    body = line.partition("] ")[2]
                    if body.startswith(f"{ip} ") and "lladdr" in body:
                        return stamp(line)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


def run_and_reach(
    h1: Host, watches: list[NeighWatch], network: str, name: str, image: str
) -> tuple[float, float] | None:
    """`docker run -d` on h1; (ms from its return to the entry on the last of the
    watching hosts, ms the run took), or None if an entry did not come within 10 s."""
    t0 = time.time()
    h1.docker("run", "-d", "--name", name, "--network", network, image, "sleep", "3600")
    returned = time.time()
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    ip = h1.docker("inspect", "-f", fmt, name).stdout.strip()
    seen = [w.added(ip, timeout=10) for w in watches]
    if any(at is None for at in seen):
        return None
    last = max(at for at in seen if at is not None)
    return (last - returned) * 1000, (returned - t0) * 1000
