"""When a new container becomes reachable from another host, read from that host's kernel.

The first `reach` probe pinged the new address in a loop, each try a fork of
nsenter and a `ping -W 0.1`: a try that started just before the entry
appeared failed after 100 ms, so the figure carried up to ~130 ms of probe
delay (it read "median +1.6 ms, min -66, max +17.6" after `docker run`
returned). Here the receiving host's overlay namespace is watched with
`ip -ts monitor neigh` from before the run: the time `ip` printed the VTEP's
new neighbour entry (an upper bound on when the kernel had it, late by the
scheduling delay of one process) costs the run nothing. Lab hosts are
namespaces of this machine, so both clocks are the same (`ip` prints UTC here).
That entry is what makes the container reachable from there (the FDB entry
comes in the same batch, its local side was ready before `docker run` returned).
Docker's overlay programs the same kind of entry in its own namespace, so both
drivers are measured the same way.
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime

from lab.hosts import Host


def stamp(line: str) -> float | None:
    """`[2026-12-05T15:34:07.190536] ...` (UTC: NeighWatch runs `ip` with TZ=UTC) -> epoch."""
    if not line.startswith("[") or "]" not in line:
        return None
    try:
        at = datetime.fromisoformat(line[1 : line.index("]")])
    except ValueError:
        return None
    return at.replace(tzinfo=UTC).timestamp()


PROBE_IP = "192.0.2.254"  # TEST-NET-1: no container has it


class NeighWatch:
    """`ip -ts monitor neigh` in network namespace `ns_path` of host `h`, from now on."""

    def __init__(self, h: Host, ns_path: str) -> None:
        cmd = ("env", "TZ=UTC", "nsenter", f"--net={ns_path}", "ip", "-ts", "monitor", "neigh")
        self.proc = h.popen(*cmd)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        # listening once a throwaway entry shows (a run before that would be missed)
        probe = ("nsenter", f"--net={ns_path}", "ip", "neigh")
        dev = h.run(*probe[:2], "ip", "-o", "link", "show", "type", "vxlan").stdout.split(":")
        if len(dev) > 1:
            where = ("dev", dev[1].strip().split("@")[0])
            h.run(*probe, "replace", PROBE_IP, "lladdr", "02:00:00:00:00:01", *where)
            seen = self.added(PROBE_IP, timeout=10)
            h.run(*probe, "del", PROBE_IP, *where, check=False)
            if seen is None:
                self.close()
                raise RuntimeError(f"ip monitor in {ns_path} printed nothing in 10 s")

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
