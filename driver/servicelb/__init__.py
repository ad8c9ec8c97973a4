"""Swarm service VIPs, balanced by nftables DNAT in each container's own namespace, and
the routing mesh (published ports on every node) in one table in the host's.

ruleset.py     PURE: service rows -> one namespace's nftables ruleset, and the plan
programmer.py  keeps every local container's rules in line (and forgets UDP flows
               to tasks that went)
watcher.py     asks the local dockerd which service and VIP each joined task has
meshrules.py   PURE: published ports (the routing mesh) -> the host's nftables table, the plan
mesh.py        keeps this host's mesh table in line with every host's `mesh` row
meshdocker.py  PURE: ports a manager's service list publishes; the DOCKER-USER accept rule
"""
