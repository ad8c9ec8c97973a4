"""/proc/net/{tcp,udp}{,6}: which ports a process on this host listens on (the routing
mesh reports a published port that one of them also wants)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

LISTEN = {"tcp": "0A", "udp": "07"}  # TCP_LISTEN; UDP: unconnected (bound)
Listener = tuple[str, str, int]  # (protocol, address, port)


def parse(text: str, protocol: str, v6: bool = False) -> set[Listener]:
    """Lines of /proc/net/<protocol>[6] -> the listening (bound) sockets."""
    out = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != LISTEN[protocol]:
            continue
        addr_hex, _, port_hex = fields[1].partition(":")
        try:
            raw = bytes.fromhex(addr_hex)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addr = str(IPv6Address(raw))
            else:
                addr = str(IPv4Address(raw[::-1]))
            out.add((protocol, addr, int(port_hex, 16)))
        except ValueError:
            continue
    return out


def listening(proc: Path = Path("/proc/net")) -> frozenset[Listener]:
    """Every TCP listener and bound UDP socket of this network namespace."""
    out: set[Listener] = set()
    for protocol in LISTEN:
        for suffix, v6 in (("", False), ("6", True)):
            try:
                text = (proc / f"{protocol}{suffix}").read_text()
            except OSError:
                continue
            out |= parse(text, protocol, v6)
    return frozenset(out)
