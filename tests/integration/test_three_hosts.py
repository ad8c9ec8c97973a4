"""Three real Docker hosts: the seed's three tiers on three hosts, and concurrent `docker run`s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from support import Scratch, both, ip_of, ping

from pyoverlay.lab.hosts import IMAGE, Lab, start_seed_app, wait_for

pytestmark = pytest.mark.integration
HOSTS = 3


def test_seed_application_on_three_hosts(lab: Lab, scratch: Scratch) -> None:
    h1, h2, h3 = lab.hosts
    both(scratch, lab, "net1", "100.1.0.0/24")
    start_seed_app(h1, h2, h3, "net1", run=scratch.run)
    wait_for(
        "front(h3) -> web(h2) -> kv(h1)",
        lambda: "says hits=" in lab.http_get(h3, 1080, "/cgi-bin/app"),
        timeout=30,
    )
    assert "says hits=:" in lab.http_get(h3, 1080, "/cgi-bin/app")


def test_concurrent_runs_on_three_hosts_get_distinct_addresses(lab: Lab, scratch: Scratch) -> None:
    both(scratch, lab, "net2", "100.1.2.0/24")
    jobs = [(h, f"{h.name}c{i}") for h in lab.hosts for i in range(4)]

    def run(job):
        h, name = job
        scratch.run(h, name, "--network", "net2", IMAGE, "sleep", "3600")
        return ip_of(h, name, "net2")

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        ips = list(pool.map(run, jobs))
    assert len(set(ips)) == len(ips), sorted(ips)
    # every host reaches one container on each other host
    for h in lab.hosts:
        for other, name in jobs:
            if other is not h and name.endswith("c0"):
                src, target = f"{h.name}c0", ip_of(other, name, "net2")
                wait_for(f"{src} -> {name}", lambda h=h, s=src, t=target: ping(h, s, t), timeout=15)
