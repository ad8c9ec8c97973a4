"""Measuring tools the benchmarks share (bench.py, bench_vips.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

from lab.hosts import sh, wait_for


def iperf_gbps(
    server: list[str], client: list[str], target: str, port: int, seconds: int = 5
) -> float:
    """Gbit/s from client to server; `server`/`client` prefix iperf3 with how to enter a netns.
    The client starts once the server listens (seen by `ss` in the server's namespace)."""
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            f"iperf3 listening on {port}",
            lambda: f":{port}" in sh(*server, "ss", "-Hltn", f"sport = :{port}").stdout,
            timeout=20,
            interval=0.02,
        )
        cmd = [*client, "iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"]
        r = sh(*cmd, timeout=seconds + 30)
        return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.wait(timeout=30)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_hog(cores: int | None = None) -> Iterator[list[int]]:
    """A busy loop on every core (or `cores` of them) while the block runs: a machine
    that is busy with other work. Started and stopped by pid; yields the pids."""
    n = cores if cores is not None else (os.cpu_count() or 1)
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
