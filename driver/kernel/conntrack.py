"""ADAPTER: forget conntrack flows over raw ctnetlink (NETLINK_NETFILTER), in one namespace.

When a service task goes, its VIP's rule changes at once, but a UDP "flow"
that conntrack already DNATed to it keeps going there until the entry times
out (30-180 s): a client that keeps sending from one port keeps talking to a
task that is gone.  kube-proxy deletes those entries; so does pyoverlay, in
the client container's namespace (where its VIP rules DNAT): every UDP entry
whose original destination is the VIP and whose reply comes from a removed
task.  The table is dumped and matched here (a container namespace holds few
entries), and each match is deleted by its original tuple and id, echoed back
as the kernel sent them, so an entry that was reused meanwhile is not hit.

Blocking socket I/O: run on the namespace thread (netns.py) inside the
container's namespace.  The codec is pure (unit-tested on bytes).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyoverlay.driver.kernel.rtnl import (
    AF_INET,
    HEADER,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    acks,
    attributes,
    dump_spans,
)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ID, CTA_ZONE = 1, 2, 12, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM = 1
IPPROTO_UDP = 17
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (network order, 0)
ATTR_HEAD = struct.Struct("=HH")


@dataclass(frozen=True)
class Flow:
    """One conntrack entry, as far as pyoverlay looks at it; `key` is what deletes it."""

    proto: int
    orig_dst: IPv4Address | None
    reply_src: IPv4Address | None
    key: bytes  # the CTA_TUPLE_ORIG, CTA_ID and CTA_ZONE attributes, as the kernel sent them


def _tuple(raw: bytes) -> tuple[int | None, IPv4Address | None, IPv4Address | None]:
    """(protocol, source, destination) of a CTA_TUPLE_* payload."""
    parts = attributes(raw, 0, len(raw))
    ip = parts.get(CTA_TUPLE_IP, b"")
    addrs = attributes(ip, 0, len(ip))
    proto = parts.get(CTA_TUPLE_PROTO, b"")
    num = attributes(proto, 0, len(proto)).get(CTA_PROTO_NUM)

    def v4(kind: int) -> IPv4Address | None:
        a = addrs.get(kind)
        return IPv4Address(a) if a is not None and len(a) == 4 else None

    return (num[0] if num else None), v4(CTA_IP_V4_SRC), v4(CTA_IP_V4_DST)


def _raw_attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """type -> the whole attribute (header and padding included), to echo it back."""
    out = {}
    off = start
    while off + ATTR_HEAD.size <= end:
        alen, kind = ATTR_HEAD.unpack_from(data, off)
        if alen < ATTR_HEAD.size:
            break
        step = (alen + 3) & ~3
        out[kind & 0x3FFF] = data[off : off + step]
        off += step
    return out


def parse_flows(data: bytes) -> tuple[list[Flow], bool]:
    """The entries in one read of a conntrack dump; True once the dump is done."""
    out = []
    spans, done = dump_spans(data, CT_NEW)
    for at, end in spans:
        raw = _raw_attrs(data, at + NFGENMSG.size, end)
        orig, reply = raw.get(CTA_TUPLE_ORIG), raw.get(CTA_TUPLE_REPLY)
        if orig is None or reply is None:
            continue
        proto, _, dst = _tuple(orig[ATTR_HEAD.size :])
        _, src, _ = _tuple(reply[ATTR_HEAD.size :])
        key = b"".join(raw[k] for k in (CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE) if k in raw)
        out.append(Flow(proto or 0, dst, src, key))
    return out, done


def _request(kind: int, flags: int, seq: int, body: bytes = b"") -> bytes:
    payload = NFGENMSG.pack(AF_INET, 0, 0) + body
    return HEADER.pack(HEADER.size + len(payload), kind, flags, seq, 0) + payload


def stale(flows: list[Flow], vip: IPv4Address, gone: Collection[IPv4Address]) -> list[Flow]:
    """UDP flows to `vip` answered by a task in `gone`."""
    return [
        f for f in flows if f.proto == IPPROTO_UDP and f.orig_dst == vip and f.reply_src in gone
    ]


def forget(vip: IPv4Address, gone: Collection[IPv4Address], timeout: float = 5.0) -> int:
    """Delete the UDP flows to `vip` that tasks in `gone` answer, in the calling thread's
    namespace (blocking); how many were deleted."""
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
    ) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.send(_request(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1))
        flows: list[Flow] = []
        done = False
        while not done:
            part, done = parse_flows(sock.recv(1 << 20))
            flows += part
        doomed = stale(flows, vip, gone)
        if not doomed:
            return 0
        seqs = range(2, 2 + len(doomed))
        sock.send(
            b"".join(
                _request(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, s, f.key)
                for s, f in zip(seqs, doomed, strict=True)
            )
        )
        waiting, deleted = set(seqs), 0
        while waiting:
            for seq, code in acks(sock.recv(1 << 20)).items():
                if seq in waiting:
                    waiting.discard(seq)
                    if code == 0:
                        deleted += 1
                    elif code != errno.ENOENT:  # gone by itself meanwhile: fine
                        raise OSError(code, f"conntrack delete: {errno.errorcode.get(code)}")
        return deleted
