"""ADAPTER: FDB and ARP entries on a VTEP, in bulk, over raw rtnetlink (rtnl.py) on a
thread that enters the network's namespace (netns.py): 10,000 entries in about half a
second, each with its own ACK, so each entry's error is known."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

import structlog

from pyoverlay.core.errors import KernelError, PyoverlayError
from pyoverlay.core.ip import IPAddr
from pyoverlay.driver.core.interfaces import PeerEntries
from pyoverlay.driver.core.ops import DeleteFdb, DeleteNeigh, PeerOp, ReplaceFdb, ReplaceNeigh
from pyoverlay.driver.kernel import rtnl
from pyoverlay.driver.kernel.netns import NetnsThread

log = structlog.get_logger("pyoverlay.kernel")
GONE = {errno.ENODEV, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ESRCH}  # nothing to remove


class PeerEntryAdapter:
    def __init__(self, netns_dir: Path, thread: NetnsThread) -> None:
        self.netns_dir = netns_dir
        self._netlink = thread  # raw netlink sockets made inside a namespace

    async def results(self, ops: Sequence[PeerOp]) -> list[bool | PyoverlayError]:
        """FDB/ARP ops in bulk over a raw netlink socket in each VTEP's namespace
        (rtnl.py): one sendmsg per CHUNK of requests, every one ACKed.  Per op:
        True (done), False (a delete of what was not there) or the error."""
        results: list[bool | PyoverlayError] = [False] * len(ops)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, op in enumerate(ops):
            groups.setdefault((op.ns, op.dev), []).append(i)
        for (ns, dev), where in groups.items():
            work = partial(rtnl.batch_on, dev, [_entry(ops[i]) for i in where])
            try:
                codes = await self._netlink.call(self.netns_dir / ns, work)
            except PyoverlayError as exc:  # the namespace is gone
                codes = [errno.ENODEV] * len(where)
                log.debug("peer ops", ns=ns, error=str(exc))
            except OSError as exc:
                for i in where:
                    results[i] = KernelError(str(ops[i]), dev, exc.errno or 0, str(exc))
                continue
            if codes is None:  # no such device
                codes = [errno.ENODEV] * len(where)
            for i, code in zip(where, codes, strict=True):
                gone = isinstance(ops[i], DeleteFdb | DeleteNeigh) and code in GONE
                if code == errno.ENODEV and not gone:
                    results[i] = KernelError(str(ops[i]), dev, code, f"{ns}/{dev} is missing")
                elif code and not gone:
                    results[i] = KernelError(str(ops[i]), dev, code, os.strerror(code))
                else:
                    results[i] = not gone
        return results

    async def read(self, ns: str, dev: str) -> PeerEntries:
        if not (self.netns_dir / ns).exists():
            return PeerEntries()
        try:
            dumped = await self._netlink.call(self.netns_dir / ns, partial(rtnl.peer_dump, dev))
        except OSError as exc:
            raise KernelError("dump neighbours", f"{ns}/{dev}", exc.errno or 0, str(exc)) from exc
        if dumped is None:
            return PeerEntries()
        idx, bridge, inet = dumped
        fdb: dict[str, IPv4Address] = {}
        for m in bridge:
            if (
                m.ifindex == idx
                and isinstance(m.dst, IPv4Address)
                and m.lladdr
                and m.lladdr != "00:00:00:00:00:00"
            ):
                fdb[m.lladdr] = m.dst
        neigh: dict[IPAddr, str] = {}
        for m in inet:
            if m.ifindex == idx and m.state & rtnl.NUD_PERMANENT and m.dst and m.lladdr:
                neigh[m.dst] = m.lladdr
        return PeerEntries(fdb, neigh)


def _entry(op: PeerOp) -> rtnl.Entry:
    match op:
        case ReplaceFdb(mac=mac, dst=dst) | DeleteFdb(mac=mac, dst=dst):
            return rtnl.Entry(True, isinstance(op, ReplaceFdb), mac, dst)
        case ReplaceNeigh(ip=ip, mac=mac):
            return rtnl.Entry(False, True, mac, ip)
        case DeleteNeigh(ip=ip):
            return rtnl.Entry(False, False, "00:00:00:00:00:00", ip)
    raise AssertionError(op)
