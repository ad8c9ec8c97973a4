"""Swarm service VIPs, balanced by nftables DNAT in each container's own namespace.

ruleset.py     PURE: service rows -> one namespace's nftables ruleset, and the plan
programmer.py  keeps every local container's rules in line (and forgets UDP flows
               to tasks that went)
watcher.py     asks the local dockerd which service and VIP each joined task has
"""
