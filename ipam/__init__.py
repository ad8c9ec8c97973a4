"""pyoverlay's IPAM driver: pools and addresses for `--ipam-driver pyoverlay`.

allocator.py is pure (a pool and its allocations -> next address);
service.py implements Docker's IpamDriver calls on top of it and persists.
The service asks an `AddressGuard` before handing out an address: on a
single host every address of the pool is ours to give; a cluster-wide guard
(multi-host IPAM) restricts that to blocks this host owns.
"""
