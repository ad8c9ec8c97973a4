"""The mesh keeper: rows in, table out; a manager publishes ports, a worker does not;
the sync gate keeps the kernel's table; drift is repaired; dockerd down is reported."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address as A
from pathlib import Path
from typing import Any

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.driver.servicelb import meshdocker
from pyoverlay.driver.servicelb import meshrules as rules
from pyoverlay.driver.servicelb.mesh import SCOPE, MeshKeeper


class ShapeTables:
    """The host's nftables, as far as the keeper reads them: commands kept per table and
    listed back in `nft -j` shape (chains, rules with comments, element counts)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.applied = 0
        self.handle = 0

    async def apply(self, netns: Path | None, commands: list[dict[str, Any]]) -> None:
        for cmd in commands:
            ((verb, body),) = cmd.items()
            ((kind, obj),) = body.items()
            key = (obj["family"], obj.get("table", obj.get("name")))
            if verb == "delete" and kind == "table":
                del self.tables[key]
            elif verb == "delete" and kind == "rule":
                self.tables[key] = [
                    c for c in self.tables[key] if c.get("rule", {}).get("handle") != obj["handle"]
                ]
            else:
                self.handle += 1
                self.tables.setdefault(key, []).append({kind: {**obj, "handle": self.handle}})
        self.applied += 1

    async def list_table(self, netns: Path | None, family: str, name: str) -> Any | None:
        items = self.tables.get((family, name))
        if items is None:
            return None
        out: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for item in items:
            ((kind, obj),) = item.items()
            if kind == "element":
                counts[obj["name"]] = counts.get(obj["name"], 0) + len(obj["elem"])
            elif kind == "rule":
                out.append({"rule": dict(obj)})
            elif kind in ("chain", "set", "map"):
                out.append({kind: dict(obj)})
        for item in out:
            obj = item.get("set") or item.get("map")
            if obj is not None:
                obj["elem"] = [0] * counts.get(obj["name"], 0)
        return {"nftables": out}

    async def forget_flows(self, netns: Path | None, vip: A, gone: Any) -> int:
        return 0

    def close(self) -> None:
        pass


class Dockerd:
    def __init__(self, manager: bool) -> None:
        self.manager = manager
        self.services: list[dict[str, Any]] = []
        self.down = False

    async def get(self, path: str) -> Any:
        if self.down:
            raise PyoverlayError("dockerd at /run/docker.sock: refused")
        if path == "/info":
            return {"Swarm": {"ControlAvailable": self.manager}}
        if path == "/services":
            return self.services
        if path == "/networks/docker_gwbridge":
            return {"Containers": {"c1": {"IPv4Address": "172.18.0.3/16"}}}
        if path.startswith("/networks/"):
            return {"Containers": {"c1": {"EndpointID": "e1"}}}
        return None


def keeper(tmp: Path, manager: bool) -> tuple[MeshKeeper, ShapeTables, Dockerd]:
    from support import UNDERLAY

    from pyoverlay.driver.core.model import Underlay
    from pyoverlay.driver.overlay.driver import OverlayDriver
    from testing.fakes import FakeKernel

    d = OverlayDriver(
        FakeKernel(UNDERLAY), tmp / "driver.json", "node1", Underlay(UNDERLAY.address, 4789, 1500)
    )
    d.load()
    tables, docker = ShapeTables(), Dockerd(manager)
    tables.tables[("ip", "filter")] = [{"chain": {"family": "ip", "name": "DOCKER-USER"}}]
    return MeshKeeper(d, tables, docker, A("192.168.1.1")), tables, docker


def front(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Spec": {"Name": "front"}, "Endpoint": {"Ports": ports}}


async def one_round(k: MeshKeeper, verify: bool = False) -> int:
    await k.read_ports(0.0)
    await k.read_gateways()
    k.publish()
    return await k.sync(verify)


def test_a_manager_publishes_ports_and_every_node_balances_over_task_hosts(
    tmp_path: Path,
) -> None:
    from pyoverlay.driver.core.options import PoolData

    (tmp_path / "netns").mkdir()
    k, tables, docker = keeper(tmp_path, manager=True)
    d = k.driver
    docker.services = [front([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 1080}])]

    async def scenario() -> None:
        # nothing runs yet: the port is known, no target, no table, no DOCKER-USER rule
        assert await one_round(k) == 0
        assert ("ip", rules.TABLE) not in tables.tables
        (row,) = [v for key, v, _ in d.directory.rows(SCOPE) if key == d.node_id]
        assert row == {"addr": "192.168.1.1", "tasks": {}, "ports": {"front": [["tcp", 1080, 80]]}}
        # another host says it runs a task of front: balanced through it
        d.directory.put(
            SCOPE, "node2", {"addr": "192.168.1.2", "tasks": {"front": 1}}, (1, "node2")
        )
        assert await one_round(k) > 0
        (b,) = k.mesh.ports
        assert [(str(t.address), t.port, t.local) for t in b.targets] == [
            ("192.168.1.2", 1080, False)
        ]
        listing = await tables.list_table(None, "ip", "filter")
        assert meshdocker.docker_user_handles(listing) is not None
        assert len(meshdocker.docker_user_handles(listing) or ()) == 1
        # a local task joins and the watcher binds it: its gwbridge address comes first
        await d.create_network(
            "n1", {"vni": "300"}, [PoolData("10.0.0.0/24", "10.0.0.1/24")], [], False, False
        )
        await d.create_endpoint("n1", "e1", "10.0.0.5/24", "", "")
        (tmp_path / "netns" / "sb1").touch()
        await d.join("n1", "e1", str(tmp_path / "netns" / "sb1"))
        await d.bind_service("n1", "e1", "front", "10.0.0.2")
        assert await one_round(k) > 0
        (b,) = k.mesh.ports
        assert [(str(t.address), t.local) for t in b.targets] == [
            ("172.18.0.3", True),
            ("192.168.1.2", False),
        ]
        assert k.published is not None and k.published["tasks"] == {"front": 1}
        assert await one_round(k) == 0  # nothing changed: nothing run, nothing read
        # drift by hand (a chain emptied) is repaired by the periodic read-back
        tables.tables[("ip", rules.TABLE)] = [
            c
            for c in tables.tables[("ip", rules.TABLE)]
            if c.get("rule", {}).get("chain") != "port-tcp-1080"
        ]
        assert await one_round(k, verify=True) > 0
        # the service goes: table and DOCKER-USER rule go
        docker.services = []
        assert await one_round(k) > 0
        assert ("ip", rules.TABLE) not in tables.tables
        listing = await tables.list_table(None, "ip", "filter")
        assert meshdocker.docker_user_handles(listing) == ()

    asyncio.run(scenario())


def test_a_worker_publishes_no_ports_and_the_sync_gate_keeps_the_table(tmp_path: Path) -> None:
    (tmp_path / "netns").mkdir()
    k, tables, docker = keeper(tmp_path, manager=False)
    d = k.driver
    ports = {"front": [["tcp", 1080, 80]]}
    d.directory.put(SCOPE, "mgr", {"addr": "192.168.1.9", "tasks": {}, "ports": ports}, (1, "mgr"))
    d.directory.put(SCOPE, "node2", {"addr": "192.168.1.2", "tasks": {"front": 2}}, (1, "node2"))

    async def scenario() -> None:
        assert await one_round(k) > 0
        assert k.published is not None and "ports" not in k.published
        before = tables.tables[("ip", rules.TABLE)]
        # restarted, not synced yet: the task host's row is not back; the table stays
        d.prune_peers = False
        d.directory.withdraw(SCOPE, "node2")
        assert await one_round(k) == 0
        assert tables.tables[("ip", rules.TABLE)] is before
        d.prune_peers = True
        assert await one_round(k) > 0
        assert ("ip", rules.TABLE) not in tables.tables
        # dockerd down: the round fails with dockerd's words, the table is untouched
        docker.down = True
        try:
            await k.read_ports(100.0)
        except PyoverlayError as exc:
            assert "refused" in str(exc)
        else:
            raise AssertionError("dockerd down went unnoticed")

    asyncio.run(scenario())


def test_a_service_on_an_encrypted_network_is_forwarded_in_esp_or_not_at_all(
    tmp_path: Path,
) -> None:
    k, _, _ = keeper(tmp_path, manager=False)
    d = k.driver
    ports = {"front": [["tcp", 1080, 80]]}
    d.directory.put(SCOPE, "mgr", {"addr": "192.168.1.9", "tasks": {}, "ports": ports}, (1, "mgr"))
    row = {"addr": "192.168.1.2", "tasks": {"front": 1}, "encrypted": ["front"]}
    d.directory.put(SCOPE, "node2", row, (1, "node2"))
    # this host cannot encrypt (the default until the plugin wires the IPsec keeper)
    mesh = k.wanted()
    assert [b.targets for b in mesh.ports] == [()]  # no local task here: refused, not sent
    assert any("front is on an encrypted network and IPsec is off" in c for c in mesh.conflicts)
    # it can, but node2 does not say it does the hop in ESP (an older plugin, a kernel
    # without ESP): it would answer in the clear, so it gets no share
    woken: list[bool] = []
    k.esp, k.on_secure = (lambda: None), (lambda: woken.append(True))
    assert [b.targets for b in k.wanted().ports] == [()]
    assert k.row()["esp"] is True  # (what this host says of itself)
    d.directory.put(SCOPE, "node2", {**row, "esp": True}, (2, "node2"))
    # before the plugin synced with the cluster the keeper is told nothing either way
    d.prune_peers = False
    asyncio.run(k.sync())
    assert k.secure_hop() is None and woken == []
    d.prune_peers = True
    asyncio.run(k.sync())
    (front,) = k.mesh.ports
    assert front.secure and [str(t.address) for t in front.targets] == ["192.168.1.2"]
    assert k.secure_hop() is True and woken == [True] and not k.mesh.conflicts
    assert k.view()["ports"][0]["encrypted"] is True


def test_a_task_whose_gateway_dockerd_does_not_list_is_not_announced(tmp_path: Path) -> None:
    from pyoverlay.driver.core.options import PoolData

    (tmp_path / "netns").mkdir()
    k, _, docker = keeper(tmp_path, manager=False)
    d = k.driver

    async def no_bridge(path: str) -> Any:
        return {"Containers": {}} if path.startswith("/networks/") else None

    docker.get = no_bridge  # type: ignore[method-assign]

    async def scenario() -> None:
        pool = [PoolData("10.0.0.0/24", "10.0.0.1/24")]
        await d.create_network("n1", {"vni": "300"}, pool, [], False, False)
        await d.create_endpoint("n1", "e1", "10.0.0.5/24", "", "")
        (tmp_path / "netns" / "sb1").touch()
        await d.join("n1", "e1", str(tmp_path / "netns" / "sb1"))
        await d.bind_service("n1", "e1", "front", "10.0.0.2")
        await k.read_gateways()
        assert k.row()["tasks"] == {}  # others would forward to it, and it could only refuse

    asyncio.run(scenario())


def test_a_managers_silent_plugin_does_not_take_the_ports_off_every_node(tmp_path: Path) -> None:
    k, _, _ = keeper(tmp_path, manager=False)
    d = k.driver
    ports = {"front": [["tcp", 1080, 80]]}
    d.directory.put(
        SCOPE, "mgr", {"addr": "192.168.1.9", "tasks": {"front": 1}, "ports": ports}, (1, "mgr")
    )
    assert [len(b.targets) for b in k.wanted().ports] == [1]
    d.directory.withdraw(SCOPE, "mgr")  # its plugin went silent: gossip dropped its rows
    kept = {"192.168.1.9"}
    d.directory.kept_vteps = lambda: frozenset(kept)  # type: ignore[method-assign]
    assert [len(b.targets) for b in k.wanted().ports] == [1]  # its host still answers
    kept.clear()  # the host itself is gone: so is what it published
    assert k.wanted().ports == ()
