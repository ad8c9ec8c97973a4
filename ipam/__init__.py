"""pyoverlay's IPAM driver: pools and addresses for `--ipam-driver pyoverlay`, unique
cluster-wide.

    allocator.py  PURE: a pool and its allocations -> the next address (round-robin)
    blocks.py     PURE: /28 block ownership, granted by a majority of voters
    cluster.py    the cluster-wide guard: claims, lending, forgetting, and their RPCs
    service.py    Docker's IpamDriver calls, persisted (ipam.json)
    spaces.py     the two address spaces' names (stdlib only, for the early handshake)
"""
