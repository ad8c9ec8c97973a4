"""Encrypted networks (`-o encrypted`: IPsec ESP between VTEPs) and the VXLAN guard.

sa.py      PURE: keys derived from the cluster key, SA numbering, rotation, the SAs
           wanted, iproute2 batch lines
guard.py   PURE: the nftables guard table (fail closed; VXLAN admission)
keeper.py  the loop that keeps SAs, policies and the guard table as sa/guard decide
"""
