"""Measuring tools the benchmarks share (bench.py, bench_vips.py, bench_mesh.py)."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lab.hosts import sh, wait_for


def iperf_gbps(
    server: list[str],
    client: list[str],
    target: str,
    port: int,
    seconds: int = 5,
    server_port: int | None = None,
) -> float:
    """Gbit/s from client to server; `server`/`client` prefix iperf3 with how to enter a netns.
    The client starts once the server listens (seen by `ss` in the server's namespace). The
    server listens on `server_port` (default: `port`, what the client dials)."""
    listen = port if server_port is None else server_port
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1", "-p", str(listen)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            f"iperf3 listening on {listen}",
            lambda: f":{listen}" in sh(*server, "ss", "-Hltn", f"sport = :{listen}").stdout,
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
# argv: address, count[, port]; prints the median seconds of connect + first byte
CONNECT_CLIENT = """
import socket, sys, time
target, n = sys.argv[1], int(sys.argv[2])
port = int(sys.argv[3]) if len(sys.argv) > 3 else 7000
t = []
for _ in range(n):
    t0 = time.perf_counter()
    c = socket.create_connection((target, port)); c.recv(1); c.close()
    t.append(time.perf_counter() - t0)
t.sort(); print(t[len(t) // 2])
"""
Route = tuple[list[str], str]  # (the command that enters the client's namespace, the target)


@dataclass(frozen=True)
class Way:
    """One way to one server: `server` enters the namespace that runs the servers (ports
    7000 and 5301 there), `client` the client's; `target` and its ports are what the
    client dials (a published port may differ from the server's)."""

    name: str
    server: list[str]
    client: list[str]
    target: str
    setup_port: int = 7000
    iperf_port: int = 5301


def side_by_side(
    server: list[str], first: tuple[str, Route], second: tuple[str, Route], rounds: int = 5
) -> tuple[dict[str, object], dict[str, object]]:
    """Connection setup (median of 500 connect + first byte, port 7000) and iperf3
    throughput (port 5301) to one server (`server` enters its namespace) along two named
    paths, alternating which goes first each round. Ratios are first / second."""
    paths = [Way(n, server, client, target) for n, (client, target) in (first, second)]
    setup, gbps = compare(paths, rounds)
    a, b = first[0], second[0]
    return _with_ratio(setup, "_us", a, b), _with_ratio(gbps, "_gbps", a, b)


def compare(
    paths: Sequence[Way], rounds: int = 5, connects: int = 500, seconds: int = 3
) -> tuple[dict[str, object], dict[str, object]]:
    """Setup (median of `connects` connect + first byte) and iperf3 throughput along each
    path, one server per distinct server namespace, the paths' order rotated every round
    (drift hits all alike). Medians and every round's figure, per path."""
    setup: dict[str, list[float]] = {p.name: [] for p in paths}
    gbps: dict[str, list[float]] = {p.name: [] for p in paths}
    with accept_servers(paths):
        for r in range(rounds):
            for p in [*paths[r % len(paths) :], *paths[: r % len(paths)]]:
                cmd = [*p.client, sys.executable, "-c", CONNECT_CLIENT, p.target]
                out = sh(*cmd, str(connects), str(p.setup_port), timeout=600).stdout
                setup[p.name].append(float(out))
                gbps[p.name].append(
                    iperf_gbps(p.server, p.client, p.target, p.iperf_port, seconds, 5301)
                )
    setup_out: dict[str, object] = {}
    gbps_out: dict[str, object] = {}
    for p in paths:
        setup_out[f"{p.name}_us"] = round(statistics.median(setup[p.name]) * 1e6, 1)
        setup_out[f"{p.name}_runs_us"] = [round(x * 1e6) for x in setup[p.name]]
        # 3 significant digits: an emulated ESP path runs at a few Mbit/s
        gbps_out[f"{p.name}_gbps"] = float(f"{statistics.median(gbps[p.name]):.3g}")
        gbps_out[f"{p.name}_runs"] = [float(f"{x:.3g}") for x in gbps[p.name]]
    return setup_out, gbps_out


@contextlib.contextmanager
def accept_servers(paths: Sequence[Way]) -> Iterator[None]:
    """The connection-setup server (port 7000) in every distinct server namespace of
    `paths`, ready when the block starts; killed by pid when it ends."""
    servers: dict[tuple[str, ...], subprocess.Popen[str]] = {}
    try:
        for p in paths:
            key = tuple(p.server)
            if key not in servers:
                srv = subprocess.Popen(
                    [*p.server, sys.executable, "-c", ACCEPT_SERVER], stdout=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                servers[key] = srv
                assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        yield
    finally:
        for srv in servers.values():
            srv.kill()
            srv.wait()
            if srv.stdout is not None:
                srv.stdout.close()


def _with_ratio(figures: dict[str, object], unit: str, a: str, b: str) -> dict[str, object]:
    x, y = figures[f"{a}{unit}"], figures[f"{b}{unit}"]
    assert isinstance(x, float) and isinstance(y, float)
    return {**figures, "ratio": round(x / y, 3)}


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


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (needs 2 values or more)."""
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def paired(
    a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], digits: int = 1
) -> dict[str, object]:
    """Two sides measured alternately: each median with its IQR and every round's figure,
    the ratio of the medians, and whether the spread is wider than the gap (then the
    ratio says little)."""
    ma, mb = statistics.median(a), statistics.median(b)
    (a25, a75), (b25, b75) = iqr(a), iqr(b)
    return {  # the ratio of the two medians (not a median of per-round ratios)
        "rounds": min(len(a), len(b)),
        f"{a_name}_median": round(ma, digits),
        f"{a_name}_iqr": [round(a25, digits), round(a75, digits)],
        f"{b_name}_median": round(mb, digits),
        f"{b_name}_iqr": [round(b25, digits), round(b75, digits)],
        "ratio": round(ma / mb, 3) if mb else None,
        "spread_wider_than_gap": max(a75 - a25, b75 - b25) > abs(ma - mb),
        f"{a_name}_runs": [round(x, digits) for x in a],
        f"{b_name}_runs": [round(x, digits) for x in b],
    }
