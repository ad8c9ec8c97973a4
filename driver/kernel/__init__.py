"""Every kernel adapter, and nothing else: the only code that touches the host. Only
plugin/wiring.py imports them (scripts/check enforces it).

    links.py      pyroute2: namespaces, bridges, VXLAN devices, veths, addresses; snapshots
    entries.py    FDB/ARP entries in bulk on a VTEP (raw rtnetlink, in the namespace)
    rtnl.py       raw rtnetlink codec and socket I/O (entries, neighbour/link dumps)
    netns.py      runs blocking work inside another network namespace (setns on one thread)
    nft.py        libnftables (the only importer of nftables): guard table, VIP rules
    conntrack.py  ctnetlink: forgets the UDP flows of removed service tasks
    xfrm.py       `ip xfrm` batches: IPsec SAs and policies
    procnet.py    /proc/net/{tcp,udp}: which ports a process here listens on
"""
