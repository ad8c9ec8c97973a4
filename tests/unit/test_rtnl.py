"""The bulk FDB/ARP netlink encoder and parsers (driver/rtnl.py), without a kernel.

The requests must be byte for byte what pyroute2 itself compiles for the same
call (its IPBatch compiler), and the parsers must read what the kernel sends."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPBatch

from pyoverlay.driver.kernel import rtnl as nb

MAC = "02:42:0a:00:00:07"
IP = IPv4Address("192.0.2.7")


def compiled(call: str, **kw: object) -> bytes:
    ipb = IPBatch()
    try:
        getattr(ipb, call)(**kw)
        data = bytes(ipb.batch)
    finally:
        ipb.close()
    return data[:8] + bytes(8) + data[16:]  # its sequence number and port id, not ours


def ours(e: nb.Entry) -> bytes:
    data = nb.encode(0, 3, e)
    return data[:8] + bytes(8) + data[16:]


def test_requests_are_what_pyroute2_sends() -> None:
    fdb = compiled(
        "fdb", command="replace", ifindex=3, lladdr=MAC, dst=str(IP), state=0xC0, flags=2
    )
    assert ours(nb.Entry(True, True, MAC, IP)) == fdb
    neigh = compiled("neigh", command="replace", ifindex=3, dst=str(IP), lladdr=MAC, state=0x80)
    assert ours(nb.Entry(False, True, MAC, IP)) == neigh


def test_acks_and_dump_messages_are_read() -> None:
    def ack(seq: int, code: int) -> bytes:
        return nb.HEADER.pack(36, nb.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + bytes(16)

    assert nb.acks(ack(1, 0) + ack(2, 22)) == {1: 0, 2: 22}
    entry = nb.encode(5, 9, nb.Entry(False, True, MAC, IP))
    as_dumped = struct.pack("=I", len(entry)) + struct.pack("=H", nb.RTM_NEWNEIGH) + entry[6:]
    done = nb.HEADER.pack(20, nb.NLMSG_DONE, 0, 1, 0) + bytes(4)
    got, finished = nb.parse_dump(as_dumped + done)
    assert finished and got == [nb.Dumped(9, nb.NUD_PERMANENT, IP, MAC)]


IP6 = IPv6Address("fd00:100::7")


def test_ipv6_neighbours_are_what_pyroute2_sends_and_read_back() -> None:
    neigh = compiled(
        "neigh", command="replace", ifindex=3, family=10, dst=str(IP6), lladdr=MAC, state=0x80
    )
    assert ours(nb.Entry(False, True, MAC, IP6)) == neigh
    entry = nb.encode(5, 9, nb.Entry(False, True, MAC, IP6))
    as_dumped = struct.pack("=I", len(entry)) + struct.pack("=H", nb.RTM_NEWNEIGH) + entry[6:]
    done = nb.HEADER.pack(20, nb.NLMSG_DONE, 0, 1, 0) + bytes(4)
    got, finished = nb.parse_dump(as_dumped + done)
    assert finished and got == [nb.Dumped(9, nb.NUD_PERMANENT, IP6, MAC)]


def test_pyroute2s_forked_namespace_helpers_get_time_on_a_busy_host() -> None:
    """pyroute2 makes a namespace (and opens a socket in one) in a forked child that it
    gives 2 s by default; on a busy host that failed a `docker run` (CI-36). The kernel
    adapter gives it 20 s (pyroute2 reads the setting at each call)."""
    from pyroute2 import config

    import pyoverlay.driver.kernel.links  # noqa: F401  (sets it on import)

    assert config.default_communicate_timeout >= 20
