"""Test doubles and the gossip simulator, run from the checkout and never installed.

fakes.py  FakeKernel and FakeTables: the kernel and nftables, in memory
sim.py    a simulated network with a fake clock for real GossipNodes
ipsec_sim.py  simulated xfrm tables and `ipsec` rows for the IPsec keeper
"""
