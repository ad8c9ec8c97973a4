"""The real transport on loopback: encrypted gossip between runtimes, and hostile input.

Every datagram and stream frame is AES-GCM sealed; a packet with the wrong
key, garbage, or an oversized frame is dropped and counted, and the node
keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import pytest

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.keyring import Keyring, load_keys, parse_key
from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.state.errors import InvalidOption

KEY = os.urandom(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def runtime(name: str, keys: list[bytes]) -> GossipRuntime:
    return GossipRuntime(name, "127.0.0.1", free_port(), Keyring(keys), GossipConfig.lan())


async def test_two_runtimes_share_rows_and_drop_what_they_cannot_open() -> None:
    a, b = runtime("a", [KEY]), runtime("b", [KEY])
    try:
        await a.start([])
        await b.start([a.node.addr])
        await wait_until(
            lambda: len(a.node.alive_members()) == 2 and len(b.node.alive_members()) == 2
        )
        a.publish("peer/1", "e1", {"ip": "10.0.0.2"})
        await wait_until(lambda: b.rows("peer/1") != [])
        assert b.rows("peer/1")[0][:2] == ("e1", {"ip": "10.0.0.2"})

        # hostile datagrams: wrong key, garbage, oversized
        intruder = Keyring([os.urandom(32)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(
                intruder.seal(b'{"t":"ping","seq":1,"from":"x","to":"b"}'), ("127.0.0.1", b.port)
            )
            s.sendto(b"\x01" + os.urandom(40), ("127.0.0.1", b.port))
            s.sendto(Keyring([KEY]).seal(b"[not an object]"), ("127.0.0.1", b.port))
            s.sendto(Keyring([KEY]).seal(b"x" * 9000), ("127.0.0.1", b.port))
        # a stream frame announcing 1 GiB
        r, w = await asyncio.open_connection("127.0.0.1", b.port)
        w.write(struct.pack("!I", 1 << 30))
        await w.drain()
        await r.read()
        w.close()
        await wait_until(
            lambda: (
                b.counters.get("dropped_auth", 0) >= 2
                and b.counters.get("dropped_malformed", 0) >= 1
                and b.counters.get("dropped_oversized", 0) >= 2
            )
        )
        # and it still works
        a.publish("peer/1", "e2", {"ip": "10.0.0.3"})
        await wait_until(lambda: len(b.rows("peer/1")) == 2)
    finally:
        await a.stop()
        await b.stop()


async def test_key_rotation_keeps_the_cluster_talking() -> None:
    new = os.urandom(16)
    a, b = runtime("a", [KEY, new]), runtime("b", [new, KEY])  # b already sends with the new key
    try:
        await a.start([])
        await b.start([a.node.addr])
        await wait_until(
            lambda: len(a.node.alive_members()) == 2 and len(b.node.alive_members()) == 2
        )
        b.publish("peer/9", "k", {"ip": "10.9.0.2"})
        await wait_until(lambda: a.rows("peer/9") != [])
    finally:
        await a.stop()
        await b.stop()


def test_keys_are_checked_and_say_how_to_make_one(tmp_path) -> None:
    good = base64.b64encode(os.urandom(24)).decode()
    assert len(parse_key(good, "--gossip-key")) == 24
    with pytest.raises(
        InvalidOption,
        match="16, 24 or 32 bytes, this one is 5; make one with `openssl rand -base64 32`",
    ):
        parse_key(base64.b64encode(b"short").decode(), "--gossip-key")
    with pytest.raises(InvalidOption, match="not base64"):
        parse_key("not base64!!", "--gossip-key")
    f = tmp_path / "keys"
    f.write_text(f"# rotation\n{good}\n{base64.b64encode(KEY).decode()}\n")
    assert load_keys(None, str(f))[1] == KEY
    f.write_text("\n")
    with pytest.raises(InvalidOption, match="holds no key"):
        load_keys(None, str(f))
