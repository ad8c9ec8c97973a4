"""pyoverlay's data plane, one folder per subsystem; `ls driver/kernel` answers "what
touches the host?".

    core/       shared types and seams: specs, options, ops, the Protocols, the directory
    overlay/    the seed's L2 overlay: namespace, br0, VTEP, veths, FDB/ARP from the table
    servicelb/  swarm service VIPs in nftables (kube-proxy's pattern, no IPVS)
    secure/     `-o encrypted` (IPsec ESP between VTEPs) and the VXLAN guard table
    kernel/     every kernel adapter and nothing else (pyroute2, rtnetlink, nft, xfrm...)
"""
