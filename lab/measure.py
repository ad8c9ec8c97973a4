"""Measuring tools the benchmarks share (bench.py, bench_vips.py, bench_mesh.py)."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
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


ACCEPT_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(512); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"x"); c.close()
"""
# argv: address, count; prints the median seconds of connect + first byte
CONNECT_CLIENT = """
import socket, sys, time
target, n = sys.argv[1], int(sys.argv[2])
t = []
for _ in range(n):
    t0 = time.perf_counter()
    c = socket.create_connection((target, 7000)); c.recv(1); c.close()
    t.append(time.perf_counter() - t0)
t.sort(); print(t[len(t) // 2])
"""
Route = tuple[list[str], str]  # (the command that enters the client's namespace, the target)


def side_by_side(
    server: list[str], first: tuple[str, Route], second: tuple[str, Route], rounds: int = 5
) -> tuple[dict[str, object], dict[str, object]]:
    """Connection setup (median of 500 connect + first byte, port 7000) and iperf3
    throughput (port 5301) to one server (`server` enters its namespace) along two named
    paths, alternating which goes first each round. Ratios are first / second."""
    srv = subprocess.Popen(
        [*server, sys.executable, "-c", ACCEPT_SERVER], stdout=subprocess.PIPE, text=True
    )
    names = (first[0], second[0])
    setup: dict[str, list[float]] = {n: [] for n in names}
    gbps: dict[str, list[float]] = {n: [] for n in names}
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        for r in range(rounds):
            order = [first, second]
            for name, (client, target) in order if r % 2 == 0 else order[::-1]:
                out = sh(*client, sys.executable, "-c", CONNECT_CLIENT, target, "500").stdout
                setup[name].append(float(out))
                gbps[name].append(iperf_gbps(server, client, target, 5301, seconds=3))
    finally:
        srv.kill()
        srv.wait()
        if srv.stdout is not None:
            srv.stdout.close()
    med = {n: (statistics.median(setup[n]), statistics.median(gbps[n])) for n in names}
    a, b = names
    setup_out: dict[str, object] = {f"{n}_us": round(med[n][0] * 1e6, 1) for n in names}
    setup_out["ratio"] = round(med[a][0] / med[b][0], 3)
    setup_out |= {f"{n}_runs_us": [round(x * 1e6) for x in setup[n]] for n in names}
    gbps_out: dict[str, object] = {f"{n}_gbps": round(med[n][1], 2) for n in names}
    gbps_out["ratio"] = round(med[a][1] / med[b][1], 3)
    gbps_out |= {f"{n}_runs": [round(x, 1) for x in gbps[n]] for n in names}
    return setup_out, gbps_out


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
