"""Bottom layer: persistence, the error tree and small runtime helpers. Nothing here
knows about Docker, the kernel or the overlay; every other package may import from
here, never the other way round.

    errors.py   the error tree (each maps to a clear message for Docker)
    store.py    JSON state documents written atomically
    logs.py     structlog set-up (stdout for info, stderr for warnings)
    metrics.py  counters and histograms for /metrics
    tasks.py    TaskSet: background tasks with a strong reference, closed together
    ip.py       addresses of either family (dual stack): types, sort key, limits
"""
