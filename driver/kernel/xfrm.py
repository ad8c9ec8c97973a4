"""ADAPTER: the kernel's IPsec tables (xfrm states and policies) through iproute2.

pyroute2 (0.9) has no XFRM netlink family, so this module drives `ip` and is
the only one that does. Keys never appear on a command line, in the
environment or in a file: every change is a batch fed to `ip -batch -` on
its stdin. Listings are parsed for the fields the planner needs (the key
material `ip` prints is dropped on the spot). Everything acts in the
namespace the plugin runs in (the host's: where the VTEPs' sockets are).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from ipaddress import IPv4Address

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.secure.sa import MARK, MESH_MARK, MESH_PORT, REQID, InstalledSa

_HEAD = re.compile(r"^src (\S+) dst (\S+)$")
_SPI = re.compile(r"proto esp spi 0x([0-9a-f]+)\(\d+\) reqid (\d+)")
_COUNT = re.compile(r"^\s*(\d+)\(bytes\), (\d+)\(packets\)")
_ADDED = re.compile(r"^\s*add (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
# `proto udp` where /etc/protocols names it, `proto 17` where it does not (the plugin's rootfs)
_POLICY = re.compile(r"^src (\S+)/32 dst (\S+)/32 (?:proto (?:udp|17) dport (\d+) )?$")
_MARK = re.compile(r"^\s+mark 0x([0-9a-f]+)/0xffffffff")
_TIMEOUT = 30.0


class XfrmError(PyoverlayError):
    """iproute2 refused an xfrm change, or is missing."""


def _ip() -> str:
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.path.exists(p)), None
    )
    if path is None:
        raise XfrmError("iproute2's `ip` is missing (apt install iproute2)")
    return path


async def _run(args: Sequence[str], stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        _ip(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), _TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise XfrmError(f"ip {' '.join(args)}: no answer in {_TIMEOUT:.0f} s") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def parse_states(text: str) -> list[InstalledSa]:
    """`ip -s xfrm state list` -> our ESP states (reqid REQID), without their keys."""
    out: list[InstalledSa] = []
    cur: dict[str, object] = {}

    def flush() -> None:
        if cur.get("reqid") == REQID and "spi" in cur:
            out.append(
                InstalledSa(
                    IPv4Address(str(cur["src"])),
                    IPv4Address(str(cur["dst"])),
                    int(str(cur["spi"])),
                    int(str(cur.get("packets", 0))),
                    float(str(cur.get("added", 0.0))),
                )
            )

    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            flush()
            cur = {"src": head[1], "dst": head[2]}
            continue
        if m := _SPI.search(line):
            cur["spi"], cur["reqid"] = int(m[1], 16), int(m[2])
        elif m := _COUNT.match(line):
            cur["packets"] = int(m[2])
        elif m := _ADDED.match(line):
            cur["added"] = time.mktime(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timetuple())
    flush()
    return out


def parse_policies(text: str) -> list[tuple[IPv4Address, IPv4Address, int]]:
    """`ip xfrm policy list dir out` -> (local, peer, port) of ours: VXLAN's (mark MARK,
    the UDP port) and the mesh's (mark MESH_MARK, no protocol: port MESH_PORT)."""
    out = []
    cur: tuple[IPv4Address, IPv4Address, int] | None = None
    for line in text.splitlines():
        if m := _POLICY.match(line.rstrip() + " "):
            port = MESH_PORT if m[3] is None else int(m[3])
            cur = (IPv4Address(m[1]), IPv4Address(m[2]), port)
        elif line[:1] != "\t" and line.strip() and not line.startswith(" "):
            cur = None  # another policy (not one of ours)
        elif cur is not None and (m := _MARK.search(line)):
            if int(m[1], 16) == (MESH_MARK if cur[2] == MESH_PORT else MARK):
                out.append(cur)
            cur = None
    return out


class Xfrm:
    async def states(self) -> list[InstalledSa]:
        rc, out, err = await _run(["-s", "xfrm", "state", "list", "reqid", str(REQID)])
        if rc != 0:
            raise XfrmError(f"ip xfrm state list: {err.strip() or rc}")
        return parse_states(out)

    async def policies(self) -> list[tuple[IPv4Address, IPv4Address, int]]:
        rc, out, err = await _run(["xfrm", "policy", "list", "dir", "out"])
        if rc != 0:
            raise XfrmError(f"ip xfrm policy list: {err.strip() or rc}")
        return parse_policies(out)

    async def batch(self, lines: Sequence[str]) -> list[str]:
        """Run `ip` commands (one per line) from stdin, each on its own (-force: a failed
        line does not stop the rest); the errors, without any key material."""
        if not lines:
            return []
        rc, _, err = await _run(["-force", "-batch", "-"], "\n".join(lines) + "\n")
        if rc == 0:
            return []
        errors = [e for e in err.strip().splitlines() if e and "0x" not in e.split("aead")[-1]]
        return errors or [f"ip -batch: exit {rc}"]

    async def probe(self) -> str | None:
        """None if this kernel can do ESP transport with AES-GCM; else why not. The test SA
        has a random SPI (an SA of that identity that someone else owns is left alone:
        another SPI is tried), and only the one added here is deleted."""
        for _ in range(3):
            spi = 0x1000 + secrets.randbelow(0xFFFF0000)
            sel = f"src 127.0.0.1 dst 127.0.0.2 proto esp spi {spi:#x}"
            add = (
                f"xfrm state add {sel} reqid 1 mode transport "
                f"aead 'rfc4106(gcm(aes))' 0x{os.urandom(36).hex()} 128"
            )
            rc, _, err = await _run(["-batch", "-"], add + "\n")
            if rc == 0:
                await _run(["-force", "-batch", "-"], f"xfrm state delete {sel}\n")
                return None
            if "File exists" not in err:
                break
        return (
            "this kernel cannot do IPsec ESP with AES-GCM (needs esp4, xfrm_user and "
            f"gcm: CONFIG_INET_ESP, CONFIG_XFRM_USER, CONFIG_CRYPTO_GCM): {err.strip()}"
        )
