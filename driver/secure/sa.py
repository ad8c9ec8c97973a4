"""PURE: IPsec for `-o encrypted` networks, and the VXLAN guard table, decided from data.

Data path (host namespace, where the VTEPs' UDP sockets live):

    VXLAN of an encrypted VNI --nft route chain: mark MARK--> xfrm policy (mark,
    this peer, udp dport VXLAN) --> ESP transport, AES-GCM (rfc4106), reqid REQID

Keys come from the cluster secret (the gossip keyring), never from the wire:

    key(s, src, dst, salt, n) = HKDF-SHA256(ikm=s, salt="pyoverlay-ipsec-1",
                                            info="src>dst/salt/n")  -> 36 bytes
                                (AES-256 key + 4-byte GCM salt) and the SPI

`salt` is the sender's (random per boot of its kernel state, published in the
replicated table); `n` is the sender's SA number towards that peer. A sender
moves to n+1 when its SA is `rotation` seconds old, when it has sent
`rekey_packets` packets (far below the 2**32 ESP sequence wrap), or when the
keyring's first key changes. Every receiver installs n-1 .. n+LOOKAHEAD of
what the sender published, for every key of its ring, so the sender's switch
finds the new inbound SA already there: a rotation loses no packet. A
(key, salt, n) is never sent with twice: n only grows (persisted), and the
salt is new whenever the kernel has lost our SAs (GCM must never reuse a
nonce under one key).

Fail closed, in nftables (guard.py: table GUARD_TABLE, ours alone): VXLAN of an
encrypted VNI that is not IPsec-protected is dropped, out (postrouting,
before the transform) and in (input, after it); the rules outlive the plugin
process. Admission: VXLAN from a source that is not a member's VTEP is
dropped (every network) and counted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from pyoverlay.driver.core.marks import MESH_ESP
from pyoverlay.driver.core.marks import REQID as REQID  # (re-exported)

MARK = 0x7079E500  # fwmark of encrypted VXLAN (full mask) that the xfrm policies select
MESH_MARK = MESH_ESP  # the routing mesh's encrypted hop (one policy per peer selects it)
MESH_PORT = 0  # a policy "port" of 0: the mesh's (any protocol), not VXLAN's
AEAD = "rfc4106(gcm(aes))"
KEY_BYTES = 36  # AES-256 key + 4-byte salt (RFC 4106)
ICV_BITS = 128
REPLAY_WINDOW = 32  # inbound anti-replay (the kernel's default is 0: none)
LOOKAHEAD = 2  # inbound SAs installed beyond the sender's published n
MAX_RING_KEYS = 4  # keys per peer that inbound SAs are installed for
DERIVED_CACHE = 4096  # derived SAs kept (a steady sync at 100 peers x 2 keys needs ~1,000)
DEFAULT_ROTATION = 12 * 3600.0  # Docker's overlay rotates every 12 h
DEFAULT_REKEY_PACKETS = 2**31  # half the 32-bit ESP sequence space
SPI_MIN = 0x100  # 1..255 are reserved (RFC 4303)
ROW_SCOPE = "ipsec"  # replicated table: key = node, value = Published.to_json()


def hkdf(ikm: bytes, info: bytes, length: int, salt: bytes = b"pyoverlay-ipsec-1") -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def key_id(secret: bytes) -> str:
    """A public name for a ring key (never the key): 8 hex digits of a hash."""
    return hashlib.sha256(b"pyoverlay-key-id" + secret).hexdigest()[:8]


@dataclass(frozen=True)
class Sa:
    """One ESP security association as pyoverlay wants it in the kernel."""

    src: IPv4Address
    dst: IPv4Address
    spi: int
    key: bytes = field(repr=False, compare=False)
    n: int = 0
    key_id: str = ""
    salt: str = ""

    @property
    def ident(self) -> tuple[IPv4Address, IPv4Address, int]:
        return (self.src, self.dst, self.spi)


@functools.lru_cache(maxsize=DERIVED_CACHE)
def derive(secret: bytes, src: IPv4Address, dst: IPv4Address, salt: str, n: int) -> Sa:
    """Pure and frozen, so cached: a steady sync re-derives every SA it wants (100 peers,
    two keys: 900 HKDF runs, half the sync's time)."""
    material = hkdf(secret, f"{src}>{dst}/{salt}/{n}".encode(), KEY_BYTES + 4)
    spi = SPI_MIN + int.from_bytes(material[KEY_BYTES:], "big") % (2**32 - SPI_MIN)
    return Sa(src, dst, spi, material[:KEY_BYTES], n, key_id(secret), salt)


@dataclass(frozen=True)
class InstalledSa:
    """An SA read back from the kernel (reqid REQID only)."""

    src: IPv4Address
    dst: IPv4Address
    spi: int
    packets: int = 0
    added: float = 0.0  # wall time it was added (kernel's add_time)

    @property
    def ident(self) -> tuple[IPv4Address, IPv4Address, int]:
        return (self.src, self.dst, self.spi)


@dataclass(frozen=True)
class Published:
    """A host's public IPsec facts, replicated to every host (row ROW_SCOPE/<node>)."""

    vtep: IPv4Address
    salt: str
    tx: dict[str, int] = field(default_factory=dict)  # peer VTEP -> n we send with
    keys: tuple[str, ...] = ()  # key_id of every key of our ring (we can receive with them)
    # peer VTEP -> the n of its `tx` towards us that our inbound SAs are installed around
    # (so up to rx + LOOKAHEAD): a sender never moves beyond what its receiver holds
    rx: dict[str, int] | None = None  # None: a row from before this field (no limit)

    def to_json(self) -> dict[str, Any]:
        d = {
            "vtep": str(self.vtep),
            "salt": self.salt,
            "tx": dict(sorted(self.tx.items())),
            "keys": list(self.keys),
        }
        if self.rx is not None:
            d["rx"] = dict(sorted(self.rx.items()))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Published | None:
        """None for a row that is not well-formed (bounded: at most 4096 peers)."""
        try:
            tx = d.get("tx") or {}
            keys = d.get("keys") or []
            rx = d.get("rx")
            if not isinstance(tx, dict) or len(tx) > 4096 or not isinstance(keys, list):
                return None
            if rx is not None and (not isinstance(rx, dict) or len(rx) > 4096):
                return None
            salt = str(d["salt"])
            if not 8 <= len(salt) <= 64 or any(c not in "0123456789abcdef" for c in salt):
                return None
            return cls(
                IPv4Address(str(d["vtep"])),
                salt,
                {str(IPv4Address(str(k))): int(v) for k, v in tx.items() if 0 <= int(v) < 2**40},
                tuple(str(k)[:8] for k in keys[:16]),
                None
                if rx is None
                else {
                    str(IPv4Address(str(k))): int(v) for k, v in rx.items() if 0 <= int(v) < 2**40
                },
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Sending:
    """What we send with towards one peer: SA number n, since when (wall time)."""

    n: int
    since: float
    key_id: str


def next_sending(
    current: Sending | None,
    installed: InstalledSa | None,
    first_key: str,
    now: float,
    rotation: float,
    rekey_packets: int,
    ceiling: int | None = None,
) -> Sending:
    """The SA number to send with now. `installed`: our current outbound SA in the kernel
    (None if it is not there). Moves on (n+1) when the SA is old, nearly used up, gone
    from the kernel (never re-add a used key: GCM nonces would repeat), or when the
    keyring's first key changed; but, unless the SA is gone, not beyond `ceiling`, the
    highest n the receiver has installed (its row lags: a rotation waits for it rather
    than send with an SA it does not hold; the kernel's own cap is far away)."""
    if current is None:
        return Sending(0, now, first_key)
    if installed is None:
        return Sending(current.n + 1, now, first_key)
    if ceiling is not None and current.n + 1 > ceiling:
        return current
    if (
        installed.packets >= rekey_packets
        or now - current.since >= rotation
        or current.key_id != first_key
    ):
        return Sending(current.n + 1, now, first_key)
    return current


def ceiling(peer: Published, local: IPv4Address) -> int | None:
    """The highest SA number `peer` holds an inbound SA for from us (None: it does not say)."""
    if peer.rx is None:
        return None
    return peer.rx.get(str(local), 0) + LOOKAHEAD


def send_key(ring: Sequence[bytes], peer: Published) -> bytes | None:
    """The first key of our ring that the peer has too (Docker's rule: send with the
    newest key every receiver holds); None if it has none of ours (it was rotated out)."""
    return next((k for k in ring if key_id(k) in peer.keys), None)


def wanted_outbound(
    ring: Sequence[bytes], local: IPv4Address, salt: str, sending: Mapping[IPv4Address, Sending]
) -> list[Sa]:
    """Our outbound SA per peer, with the key each Sending names."""
    by_id = {key_id(k): k for k in ring}
    return [
        derive(by_id[s.key_id], local, peer, salt, s.n)
        for peer, s in sorted(sending.items())
        if s.key_id in by_id
    ]


def wanted_inbound(
    ring: Sequence[bytes], local: IPv4Address, peers: Iterable[Published]
) -> list[Sa]:
    """Per peer and ring key: SAs n-1 .. n+LOOKAHEAD around what the peer says it sends
    to us with (0 .. LOOKAHEAD if it does not say yet). Every key of our ring, not only
    those the peer's row lists: that row lags behind a key change, and the peer may
    already send with a key it learnt from us. At most MAX_RING_KEYS keys (a rotation
    needs two): at most peers x MAX_RING_KEYS x (LOOKAHEAD + 2) inbound SAs."""
    out: list[Sa] = []
    for p in sorted(peers, key=lambda p: p.vtep):
        if p.vtep == local:
            continue
        n = p.tx.get(str(local), 0)
        for secret in ring[:MAX_RING_KEYS]:
            for k in range(max(0, n - 1), n + LOOKAHEAD + 1):
                out.append(derive(secret, p.vtep, local, p.salt, k))
    return out


@dataclass(frozen=True)
class SaChanges:
    add: list[Sa]
    delete: list[InstalledSa]

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)


def diff_sas(
    wanted: Sequence[Sa], installed: Sequence[InstalledSa], keep: Iterable[IPv4Address] = ()
) -> SaChanges:
    """Adds first (inbound before outbound: the caller orders `wanted` that way), then
    deletes. An installed SA from or to an address in `keep` (a member whose row is not
    visible right now, e.g. suspected dead while it restarts) is left alone."""
    have = {s.ident for s in installed}
    want = {s.ident for s in wanted}
    kept = set(keep)
    add = [s for s in wanted if s.ident not in have]
    delete = [
        s for s in installed if s.ident not in want and s.src not in kept and s.dst not in kept
    ]
    return SaChanges(add, delete)


# -- xfrm: iproute2 batch lines (the adapter feeds them on stdin) -------------------------


def policy_line(verb: str, local: IPv4Address, peer: IPv4Address, port: int) -> str:
    """VXLAN to `port` (marked MARK) goes ESP to the peer; port MESH_PORT: any packet
    marked MESH_MARK. The selector names our own address as the source: a forwarded
    packet matches only once masquerade made it ours (the NAT hook looks the policy up
    again then), so a client's address never asks for an SA that cannot exist."""
    if port == MESH_PORT:
        sel = f"src {local}/32 dst {peer}/32 mark {MESH_MARK:#x} mask 0xffffffff"
    else:
        # protocol 17 (UDP) by number: iproute2 resolves names through /etc/protocols,
        # which the managed plugin's slim rootfs lacks ("PROTO value is invalid")
        sel = f"src {local}/32 dst {peer}/32 proto 17 dport {port} mark {MARK:#x} mask 0xffffffff"
    if verb == "delete":
        return f"xfrm policy delete dir out {sel}"
    return (
        f"xfrm policy update dir out {sel} tmpl src {local} dst {peer} proto esp "
        f"reqid {REQID:#x} mode transport level required"
    )


def state_add_line(sa: Sa, hard_packets: int) -> str:
    return (
        f"xfrm state add src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#x} reqid {REQID:#x} "
        f"mode transport replay-window {REPLAY_WINDOW} aead '{AEAD}' 0x{sa.key.hex()} "
        f"{ICV_BITS} limit packet-hard {hard_packets}"
    )


def state_delete_line(sa: InstalledSa) -> str:
    return f"xfrm state delete src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#x}"
