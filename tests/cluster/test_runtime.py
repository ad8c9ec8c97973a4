"""The real transport on loopback: encrypted gossip between runtimes, and hostile input.

Every datagram and stream frame is AES-GCM sealed and stamped; a packet with
the wrong key, garbage, an oversized frame, a replay or a stale stamp is
dropped and counted, and the node keeps working.  Unauthenticated TCP peers
cannot make the runtime buffer more than a small header, nor take every
stream slot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import resource
import socket
import struct
import sys
import time

import pytest

from pyoverlay.cluster.config import GossipConfig
from pyoverlay.cluster.keyring import Keyring, load_keys, parse_key
from pyoverlay.cluster.replay import Stamp
from pyoverlay.cluster.runtime import GossipRuntime
from pyoverlay.cluster.transport import MAX_STREAMS_PER_SOURCE
from pyoverlay.core.errors import InvalidOption

KEY = os.urandom(32)


_PORTS = itertools.count(random.randrange(2000))  # two runs at once start apart


def free_port() -> int:
    """A port on 127.0.0.1 free for both TCP and UDP (a gossip runtime binds both),
    outside the kernel's ephemeral range (any socket on the machine may take a port from
    it at any moment: CI-16 had "address in use" on the UDP side of a port found free
    for TCP), and apart per xdist worker (the two workers run such tests at once)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    for _ in range(2000):
        port = 20000 + (worker % 4) * 2000 + next(_PORTS) % 2000
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port for TCP and UDP in 20000-27999")


async def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def runtime(name: str, keys: list[bytes]) -> GossipRuntime:
    """A runtime in the networks these tests use (rows `peer/<net>`)."""
    r = GossipRuntime(name, "127.0.0.1", free_port(), Keyring(keys), GossipConfig.lan())
    for net in ("1", "3", "5", "9"):
        r.join_network(net)
    return r


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


async def test_a_host_that_knows_no_other_has_its_networks_ready_at_once() -> None:
    """The first host of a cluster (no --join, no members from a last life) has nobody
    to fetch a network's rows from: a first container must not wait for a sync that
    cannot come (it waited the full timeout, 2 s, on every first container)."""
    a = runtime("a", [KEY])
    try:
        await a.start([])
        a.join_network("7")
        t0 = time.monotonic()
        assert await a.network_ready("7", 2.0)
        assert time.monotonic() - t0 < 0.5
        assert a.synced.is_set()
    finally:
        await a.stop()


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
    f.chmod(0o644)
    with pytest.raises(InvalidOption, match=r"readable by group or others .*chmod 600"):
        load_keys(None, str(f))
    f.chmod(0o600)
    assert load_keys(None, str(f))[1] == KEY
    f.write_text("\n")
    with pytest.raises(InvalidOption, match="holds no key"):
        load_keys(None, str(f))


async def started_pair() -> tuple[GossipRuntime, GossipRuntime]:
    a, b = runtime("a", [KEY]), runtime("b", [KEY])
    await a.start([])
    await b.start([a.node.addr])
    await wait_until(lambda: len(a.node.alive_members()) == 2 and len(b.node.alive_members()) == 2)
    return a, b


async def test_replayed_and_stale_packets_are_dropped_and_counted() -> None:
    a, b = await started_pair()
    try:
        # a genuine packet from a, sealed with a's key and stamp, sent twice (a capture replayed)
        packet = a.transport._seal({"t": "gossip", "from": "a"})
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(packet, ("127.0.0.1", b.port))
            s.sendto(packet, ("127.0.0.1", b.port))
            # a stamp from ten minutes ago (a capture replayed to a freshly restarted host)
            old = Stamp("a", a.stamps.epoch, 10**9, int(time.time() * 1000) - 600_000)
            s.sendto(a.transport._seal({"t": "gossip", "from": "a"}, old), ("127.0.0.1", b.port))
        await wait_until(
            lambda: (
                b.counters.get("dropped_replay", 0) >= 1 and b.counters.get("dropped_stale", 0) >= 1
            )
        )
        assert b.counters["dropped_replay"] == 1, b.counters
        # a replayed RPC (e.g. a captured ipam-release) is refused too
        seen: list[dict] = []

        async def echo(body):
            seen.append(body)
            return {"ok": True}

        b.register_rpc("echo", echo)
        frame = a.transport._frame({"t": "rpc", "kind": "echo", "body": {"n": 1}})
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", b.port)
            w.write(frame)
            await w.drain()
            await r.read()
            w.close()
        assert seen == [{"n": 1}], seen
        assert b.counters["dropped_replay"] == 2, b.counters
    finally:
        await a.stop()
        await b.stop()


async def test_a_restart_with_the_clock_stepped_back_is_heard_and_revives_at_once(
    tmp_path, monkeypatch
) -> None:
    """The last life ran with a clock a minute fast (corrected by NTP at the next boot):
    the new life's replay epoch still lies above the last one (peers would drop every
    message of a lower epoch as a replay), and its incarnation is the last one + 1."""
    from pyoverlay.cluster import runtime as rt
    from pyoverlay.cluster import transport as tr
    from pyoverlay.core.store import JsonDocument

    life = JsonDocument(tmp_path / "gossip.json")
    real = tr.wall_ms
    for module in (rt, tr):  # every clock of this host, stamps included
        monkeypatch.setattr(module, "wall_ms", lambda: real() + 60_000)
    port = free_port()
    a1 = GossipRuntime("a", "127.0.0.1", port, Keyring([KEY]), GossipConfig.lan(), life=life)
    b = runtime("b", [KEY])
    try:
        await b.start([])
        await a1.start([b.node.addr])
        await wait_until(lambda: len(b.node.alive_members()) == 2)
        a1.node.members.me.inc = 4  # it refuted suspicions in that life
        a1._after()
    finally:
        await a1.stop(leave=False)
        await asyncio.sleep(0.05)  # the UDP socket closes on the next loop turns
    for module in (rt, tr):
        monkeypatch.setattr(module, "wall_ms", real)
    a2 = GossipRuntime("a", "127.0.0.1", port, Keyring([KEY]), GossipConfig.lan(), life=life)
    try:
        assert a2.node.members.me.inc == 5
        await a2.start([b.node.addr])
        a2.publish("peer/1", "after", {"ip": "10.0.0.9"})
        # (published before its join exchange answered: it waits for it, not for the next
        # push-pull)
        await wait_until(lambda: any(k == "after" for k, _, _ in b.rows("peer/1")), 3)
        assert b.counters.get("dropped_replay", 0) == 0, b.counters
    finally:
        await a2.stop()
        await b.stop()


async def test_a_dead_member_whose_host_still_answers_keeps_its_data_path() -> None:
    """b's plugin stops (kill -9: no goodbye); its host's kernel still answers on the
    gossip port (refused), so a declares it dead as ever but reports its VTEP as kept;
    b back (a new process, a saved life) ends that. The checks cost b nothing: a check
    that sends no byte is not an authentication failure (no penalty)."""
    port = free_port()

    def b_runtime() -> GossipRuntime:
        return GossipRuntime(
            "b", "127.0.0.1", port, Keyring([KEY]), GossipConfig.lan(), meta={"vtep": "10.9.9.2"}
        )

    a, b = runtime("a", [KEY]), b_runtime()
    try:
        await a.start([])
        await b.start([a.node.addr])
        await wait_until(lambda: len(a.node.alive_members()) == 2)
        assert a.kept_vteps() == frozenset()
        for _ in range(12):  # more than PENALTY_FAILURES checks from one address
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()

        async def ok(body):
            return {"ok": True}

        b.register_rpc("echo", ok)
        await wait_until(lambda: b.counters.get("host_checks_in", 0) == 12)
        assert await a.call(b.node.addr, "echo", {}, timeout=5) == {"ok": True}
        await b.stop(leave=False)
        await wait_until(lambda: a.node.members.by_name["b"].status == "dead", timeout=15)
        assert a.kept_vteps() == {"10.9.9.2"}
        b = b_runtime()
        await asyncio.sleep(0.05)
        await b.start([a.node.addr])
        await wait_until(lambda: a.node.members.by_name["b"].status == "alive")
        assert a.kept_vteps() == frozenset()
    finally:
        await a.stop()
        await b.stop()


async def test_a_stalled_loop_does_not_take_an_answering_host_for_a_silent_one() -> None:
    """A restarting plugin on a busy host blocks its own event loop for a while; the TCP
    handshake completes in the kernels meanwhile. The check must read that answer when
    it wakes, not report a timeout (it did: a live host's entries were deleted during a
    restart under load). A host that truly does not answer (its listen queue full:
    SYNs dropped) is still silent."""
    transport = runtime("a", [KEY]).transport  # not started: a check needs no listener
    loop = asyncio.get_running_loop()
    with socket.socket() as up, socket.socket() as gone:
        up.bind(("127.0.0.1", 0))
        up.listen(8)
        refused = free_port()  # nothing listens: refused, the host is up
        gone.bind(("127.0.0.1", 0))
        gone.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:  # the listen queue fills (a further SYN is dropped)
            f.setblocking(False)
            f.connect_ex(gone.getsockname())
        await asyncio.sleep(0.2)
        try:
            for target, answers in ((up, True), (None, True), (gone, False)):
                addr = f"127.0.0.1:{target.getsockname()[1] if target else refused}"
                loop.call_soon(time.sleep, 0.6)  # the loop stalls past the 0.2 s timeout
                assert await transport.host_answers(addr, 0.2) is answers, addr
        finally:
            for f in fillers:
                f.close()


async def test_a_forgotten_host_keeps_no_data_path() -> None:
    """`pyoverlay forget` of a host whose plugin is down but whose kernel answers: its
    entries and its place in the admission set go now (it is removed for good)."""
    a = runtime("a", [KEY])
    b = GossipRuntime(
        "b", "127.0.0.1", free_port(), Keyring([KEY]), GossipConfig.lan(), meta={"vtep": "10.9.9.3"}
    )
    try:
        await a.start([])
        await b.start([a.node.addr])
        await wait_until(lambda: len(a.node.alive_members()) == 2)
        await b.stop(leave=False)
        await wait_until(lambda: a.kept_vteps() == {"10.9.9.3"}, timeout=15)
        a.forget("b")
        assert a.kept_vteps() == frozenset()
    finally:
        await a.stop()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


ATTACKER = r"""
import os, socket, struct, sys, threading
port, n_idle, n_hostile = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
idle = []
for _ in range(n_idle):  # slowloris: one byte, then nothing
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"\x00"); idle.append(s)
junk = os.urandom(4 << 20)
def hostile():
    try:
        s = socket.create_connection(("127.0.0.1", port)); s.settimeout(5)
        s.sendall(struct.pack("!H", 256) + junk)  # a max-size header, then 4 MiB of junk
        s.recv(1)
    except OSError:
        pass
ts = [threading.Thread(target=hostile) for _ in range(n_hostile)]
[t.start() for t in ts]; [t.join() for t in ts]
print("done", flush=True)
sys.stdin.read()  # keep the idle connections until told
"""


async def test_hostile_connections_cannot_make_the_plugin_buffer_or_starve_gossip() -> None:
    """20 unauthenticated connections each sending a large header and 4 MiB (plus idle
    ones holding slots), from another process: the runtime's RSS grows by at most a few
    MiB, and the cluster keeps exchanging rows meanwhile."""
    a, b = await started_pair()
    try:
        before = rss_kib()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ATTACKER,
            str(b.port),
            str(MAX_STREAMS_PER_SOURCE + 6),
            "20",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"done"
        grown = rss_kib() - before
        # gossip still flows while the idle connections hold their slots
        a.publish("peer/3", "e", {"ip": "10.3.0.2"})
        await wait_until(lambda: b.rows("peer/3") != [])
        proc.stdin.close()
        await proc.wait()
        assert grown < 4 * 1024, f"RSS grew by {grown} KiB"
        assert b.counters.get("dropped_auth", 0) + b.counters.get("streams_refused", 0) >= 20
        assert b.counters.get("streams_refused", 0) >= 6, b.counters
        print(f"RSS growth under 20 hostile connections: {grown} KiB; counters {b.counters}")
    finally:
        await a.stop()
        await b.stop()


async def test_live_key_rotation_without_a_restart() -> None:
    """add the new key everywhere, make it primary everywhere, drop the old one: no gap."""
    a, b = await started_pair()
    new = os.urandom(32)
    try:
        for step, keys in enumerate(([KEY, new], [new, KEY], [new])):
            a.reload_keys(keys)
            b.reload_keys(keys)
            a.publish("peer/5", f"k{step}", {"ip": f"10.5.0.{step + 2}"})
            await wait_until(lambda step=step: len(b.rows("peer/5")) == step + 1)
        assert len(a.node.alive_members()) == 2 and len(b.node.alive_members()) == 2
        # a host still on the old key alone is now shut out
        c = runtime("c", [KEY])
        await c.start([a.node.addr])
        await wait_until(lambda: a.counters.get("dropped_auth", 0) >= 1)
        assert len(a.node.alive_members()) == 2
        await c.stop()
    finally:
        await a.stop()
        await b.stop()
