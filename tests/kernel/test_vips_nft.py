"""VIP rules on the real kernel: libnftables in a throwaway container-like namespace.

A "client" namespace (the container) and a "server" namespace holding two
task addresses, joined by a veth.  The rules pyoverlay plans are programmed
through the real adapter; the tests check what a user would: `nft list`
shows them, connections to the VIP reach both tasks with the client's own
address (no SNAT), a change touches one service, drift made with the nft
tool is repaired, and the in-memory model used by the property tests
behaves like the kernel on the same random histories.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from netprobe import SERVER, TCP_LOOP

from pyoverlay.driver.kernel.nft import Nft, NftError
from pyoverlay.driver.servicelb import ruleset as vips
from testing.fakes import FakeTables

pytestmark = pytest.mark.kernel
VIP = IPv4Address("10.9.0.100")
TASKS = (IPv4Address("10.9.0.2"), IPv4Address("10.9.0.3"))
CLIENT = "10.9.0.1"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def pair(prefix: str) -> Iterator[tuple[Path, str]]:
    """(client namespace file, server namespace name) with a veth between them."""
    c, s = f"{prefix}c", f"{prefix}s"
    server: subprocess.Popen[str] | None = None
    try:
        for ns in (c, s):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", s)
        sh("ip", "-n", c, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        for t in TASKS:
            sh("ip", "-n", s, "addr", "add", f"{t}/24", "dev", "eth0")
        for ns in (c, s):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", s, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Path("/run/netns") / c, s
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        for ns in (c, s):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def nft() -> Iterator[Nft]:
    adapter = Nft()
    yield adapter
    adapter.close()


async def programmed(tables: Nft | FakeTables, ns: Path) -> vips.Programmed | None:
    return vips.parse(await tables.list_table(ns, vips.FAMILY, vips.TABLE))


async def converge(nft: Nft | FakeTables, ns: Path, want: vips.Vips) -> list[dict[str, object]]:
    cmds = vips.plan(await programmed(nft, ns), want)
    await nft.apply(ns, cmds)
    return cmds


def connect(ns: Path, n: int, to: IPv4Address = VIP) -> list[tuple[str, str]]:
    out = sh(
        "ip", "netns", "exec", ns.name, sys.executable, "-c", TCP_LOOP, str(n), str(to), "7000"
    )
    answers = []
    for line in out.splitlines():  # "<task> <client>", or why the attempt failed
        task, _, client = line.partition(" ")
        assert task in {str(t) for t in TASKS}, f"connection {len(answers) + 1}: {line}"
        answers.append((task, client))
    return answers


async def test_vip_connections_reach_every_task_with_the_clients_address(
    pair: tuple[Path, str], nft: Nft
) -> None:
    ns, _ = pair
    want = {VIP: vips.Service("web", TASKS)}
    await converge(nft, ns, want)
    text = await nft.text(ns, "ip", "pyoverlay")
    assert "ip daddr vmap @vips" in text and "numgen random mod 2" in text, text
    assert await programmed(nft, ns) == vips.Programmed(True, want)
    seen = connect(ns, 60)
    by_task = {t: sum(1 for got, _ in seen if got == str(t)) for t in TASKS}
    assert all(n >= 10 for n in by_task.values()), by_task  # P(fail) ~ 1e-8
    assert {peer for _, peer in seen} == {CLIENT}  # the task sees the client itself
    # one task gone: one transaction rewrites that service's rule, nothing else
    want = {VIP: vips.Service("web", TASKS[:1])}
    cmds = await converge(nft, ns, want)
    assert [next(iter(c)) for c in cmds] == ["flush", "add"], cmds
    assert {got for got, _ in connect(ns, 20)} == {str(TASKS[0])}
    # scaled to 0: no table left in the container
    await converge(nft, ns, {})
    assert await nft.list_table(ns, "ip", "pyoverlay") is None


UDP_SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((a, 7001))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(100)
        key.fileobj.sendto(key.fileobj.getsockname()[0].encode(), peer)
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40000)); s.settimeout(1)  # always the same flow (5-tuple)
s.sendto(b"hi", (sys.argv[1], 7001))
try:
    print(s.recvfrom(100)[0].decode())
except TimeoutError:
    print("-")
"""


async def test_a_removed_tasks_udp_flow_is_forgotten(pair: tuple[Path, str], nft: Nft) -> None:
    """A UDP client keeps sending from one port: conntrack pins its flow to the first task.
    That task goes (rules changed, its address gone): without help the flow keeps going
    there; once pyoverlay forgets the flow, the next datagram reaches the other task."""
    ns, server_ns = pair
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", UDP_SERVER, *map(str, TASKS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        def send() -> str:
            return sh("ip", "netns", "exec", ns.name, sys.executable, "-c", UDP_CLIENT, str(VIP))

        await converge(nft, ns, {VIP: vips.Service("dns", TASKS)})
        first = send().strip()
        assert first in map(str, TASKS) and send().strip() == first  # pinned
        gone, other = (t for t in sorted(TASKS, key=lambda t: str(t) != first))
        # (the other address stays even if the gone one was the primary)
        sh(
            "ip",
            "netns",
            "exec",
            server_ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.eth0.promote_secondaries=1",
        )
        sh("ip", "-n", server_ns, "addr", "del", f"{gone}/24", "dev", "eth0")
        await converge(nft, ns, {VIP: vips.Service("dns", (other,))})
        assert send().strip() == "-"  # the rule changed, the flow did not: lost
        assert await nft.forget_flows(ns, VIP, {gone}) == 1
        assert send().strip() == str(other)
        assert await nft.forget_flows(ns, VIP, {gone}) == 0
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


async def test_drift_made_with_the_nft_tool_is_repaired(pair: tuple[Path, str], nft: Nft) -> None:
    ns, _ = pair
    want = {VIP: vips.Service("web", TASKS)}
    await converge(nft, ns, want)
    sh("ip", "netns", "exec", ns.name, "nft", "flush", "chain", "ip", "pyoverlay", "output")
    have = await programmed(nft, ns)
    assert have is not None and not have.intact
    await converge(nft, ns, want)
    assert len(connect(ns, 4)) == 4
    sh("ip", "netns", "exec", ns.name, "nft", "delete", "table", "ip", "pyoverlay")
    await converge(nft, ns, want)
    assert await programmed(nft, ns) == vips.Programmed(True, want)


async def test_bad_batch_changes_nothing_and_says_why(pair: tuple[Path, str], nft: Nft) -> None:
    ns, _ = pair
    want = {VIP: vips.Service("web", TASKS)}
    await converge(nft, ns, want)
    before = await nft.list_table(ns, "ip", "pyoverlay")
    bad = vips.plan(vips.parse(before), {}) + vips.delete_table()  # deletes twice
    with pytest.raises(NftError, match="nft in"):
        await nft.apply(ns, bad)
    assert await programmed(nft, ns) == vips.Programmed(True, want)
    with pytest.raises(NftError, match="namespace"):
        await nft.apply(Path("/run/netns/does-not-exist"), vips.skeleton())


async def test_the_model_behaves_like_the_kernel(pair: tuple[Path, str], nft: Nft) -> None:
    """Same random histories on FakeTables and on the kernel: same parsed result."""
    ns, _ = pair
    fake = FakeTables()
    rnd = random.Random(7)
    for _ in range(40):
        want = {
            IPv4Address("10.9.1.0") + v: vips.Service(
                rnd.choice(["a", "b"]),
                tuple(sorted({IPv4Address("10.9.2.0") + rnd.randrange(8) for _ in range(3)})),
            )
            for v in rnd.sample(range(6), rnd.randrange(4))
        }
        real_cmds = await converge(nft, ns, want)
        fake_cmds = await converge(fake, ns, want)
        assert real_cmds == fake_cmds
        real = await programmed(nft, ns)
        model = await programmed(fake, ns)
        assert real == model
