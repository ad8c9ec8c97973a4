"""Prometheus text metrics, without a client library: counters, gauges, latency histograms.

The plugin exposes them on its admin socket (GET /metrics).  Names:

    pyoverlay_calls_total{method}                  Docker calls answered
    pyoverlay_call_errors_total{method}            ... that answered an error
    pyoverlay_call_seconds_bucket/_sum/_count{method}
    pyoverlay_gossip_members{state}                members by state
    pyoverlay_gossip_{packets,bytes}_{in,out}_total, pyoverlay_gossip_dropped_total{reason}
    pyoverlay_table_rows{table}                    visible rows of the replicated table
    pyoverlay_fdb_entries, pyoverlay_neigh_entries programmed on this host's VTEPs
    pyoverlay_reconciler_repairs_total             drift the periodic reconciler fixed
"""

from __future__ import annotations

from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self.hist: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self.help: dict[str, tuple[str, str]] = {}

    def inc(self, name: str, labels: dict[str, str] | None = None, by: float = 1.0) -> None:
        key = tuple(sorted((labels or {}).items()))
        self.counters[name][key] = self.counters[name].get(key, 0.0) + by
        self.help.setdefault(name, ("counter", name))

    def observe(self, name: str, seconds: float, labels: dict[str, str] | None = None) -> None:
        key = (name, tuple(sorted((labels or {}).items())))
        h = self.hist.setdefault(key, [0.0] * (len(BUCKETS) + 2))  # buckets..., sum, count
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                h[i] += 1
        h[-2] += seconds
        h[-1] += 1

    def render(
        self, gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] | None = None
    ) -> str:
        lines: list[str] = []
        for name, series in sorted(self.counters.items()):
            lines.append(f"# TYPE {name} counter")
            for key, value in sorted(series.items()):
                lines.append(f"{name}{_labels(dict(key))} {value:g}")
        for name, series in sorted((gauges or {}).items()):
            lines.append(f"# TYPE {name} gauge")
            for key, value in sorted(series.items()):
                lines.append(f"{name}{_labels(dict(key))} {value:g}")
        seen: set[str] = set()
        for (name, key), h in sorted(self.hist.items()):
            if name not in seen:
                lines.append(f"# TYPE {name} histogram")
                seen.add(name)
            labels = dict(key)
            for i, b in enumerate(BUCKETS):
                lines.append(f"{name}_bucket{_labels({**labels, 'le': f'{b:g}'})} {h[i]:g}")
            lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {h[-1]:g}")
            lines.append(f"{name}_sum{_labels(labels)} {h[-2]:.6f}")
            lines.append(f"{name}_count{_labels(labels)} {h[-1]:g}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()  # one per process: the plugin's
