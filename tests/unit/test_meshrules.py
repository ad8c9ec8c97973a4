"""The routing mesh's pure planning: who balances what, the plan, the shapes compared."""

from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest

from pyoverlay.driver.servicelb import meshdocker
from pyoverlay.driver.servicelb import meshrules as mesh

WEB = mesh.PublishedPort("tcp", 1080, 80)
B, C = A("192.168.1.2"), A("192.168.1.3")


def view(**kw: object) -> mesh.MeshInput:
    base: dict[str, object] = {
        "ports": {"web": (WEB,)},
        "local": {"web": (A("172.18.0.3"),)},
        "remote": {"web": (B,)},
        "members": (B, C),
    }
    base.update(kw)
    return mesh.MeshInput(**base)  # type: ignore[arg-type]


def test_locals_first_then_hosts_that_run_tasks_and_are_members() -> None:
    m = mesh.balance(view(remote={"web": (C, B, A("10.0.0.9"))}))
    (web,) = m.ports
    assert [(str(t.address), t.port, t.local) for t in web.targets] == [
        ("172.18.0.3", 80, True),  # the task's docker_gwbridge address, target port
        ("192.168.1.2", 1080, False),  # a host with a task: its published port
        ("192.168.1.3", 1080, False),
    ]  # 10.0.0.9 is not a member: never a target


def test_a_port_two_services_claim_is_a_conflict_and_balanced_by_neither() -> None:
    m = mesh.balance(view(ports={"web": (WEB,), "api": (mesh.PublishedPort("tcp", 1080, 8080),)}))
    assert m.ports == ()
    assert m.conflicts == ("tcp/1080 is published by several services: api, web",)
    assert mesh.build(m) == []


def test_no_target_anywhere_means_no_table_and_the_old_one_goes() -> None:
    empty = mesh.balance(view(local={}, remote={}))
    assert mesh.build(empty) == []
    have = mesh.shape_of(mesh.build(mesh.balance(view())))
    assert mesh.plan(have, empty) == mesh.delete_table()
    assert mesh.plan(None, empty) == []


def test_the_plan_is_empty_when_the_kernel_holds_it_and_whole_otherwise() -> None:
    m = mesh.balance(view())
    cmds = mesh.build(m)
    assert mesh.plan(mesh.shape_of(cmds), m) == []
    moved = mesh.balance(view(remote={"web": (C,)}))
    again = mesh.plan(mesh.shape_of(cmds), moved)
    assert again[: len(mesh.delete_table())] == mesh.delete_table()  # one transaction
    assert mesh.digest(moved) != mesh.digest(m)


def test_a_member_with_no_local_task_refuses_rather_than_passing_on() -> None:
    cmds = mesh.build(mesh.balance(view(local={})))
    local = [
        c["add"]["rule"]
        for c in cmds
        if c.get("add", {}).get("rule", {}).get("chain") == "local-tcp-1080"
    ]
    assert [r["expr"] for r in local] == [[{"accept": None}]]


def test_ingress_ports_from_a_managers_service_listing() -> None:
    service = {
        "Endpoint": {
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 80,
                    "PublishedPort": 1080,
                    "PublishMode": "ingress",
                },
                {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353},
                {"Protocol": "tcp", "TargetPort": 22, "PublishedPort": 2222, "PublishMode": "host"},
                {"Protocol": "tcp", "TargetPort": 1},  # no published port yet: skipped
                "junk",
            ]
        }
    }
    assert meshdocker.published_ports(service) == (
        mesh.PublishedPort("tcp", 1080, 80),
        mesh.PublishedPort("udp", 5353, 53),
    )
    assert meshdocker.published_ports({}) == ()
    assert meshdocker.published_ports({"Endpoint": "x"}) == ()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("sctp", 1, 1), "tcp or udp"),
        (("tcp", 0, 80), "published port 0"),
        (("udp", 53, 70000), "target port"),
    ],
)
def test_a_bad_port_says_which_field(args: tuple[str, int, int], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        mesh.PublishedPort(*args)


def test_the_docker_user_rule_is_added_once_and_removed_when_unwanted() -> None:
    chain = {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}}
    ours = {"rule": {"chain": "DOCKER-USER", "handle": 7, "comment": "pyoverlay mesh"}}
    other = {"rule": {"chain": "DOCKER-USER", "handle": 3}}
    assert meshdocker.docker_user_handles(None) is None
    assert meshdocker.docker_user_handles({"nftables": [other]}) is None  # no chain: nothing
    assert meshdocker.docker_user_handles({"nftables": [chain, other]}) == ()
    assert meshdocker.docker_user_handles({"nftables": [chain, other, ours]}) == (-7,)  # old
    (insert,) = meshdocker.docker_user_plan((), wanted=True)
    assert insert["insert"]["rule"]["chain"] == "DOCKER-USER"
    assert insert["insert"]["rule"]["comment"] == meshdocker.DOCKER_USER_COMMENT
    # MARK and SECURE under one mask (the encrypted services' connections accepted too)
    match = insert["insert"]["rule"]["expr"][0]["match"]
    mask = match["left"]["&"][1]
    assert match["right"] & mask == mesh.MARK & mask == mesh.SECURE & mask
    assert meshdocker.docker_user_plan((7,), wanted=True) == []
    # an older version's rule (accepting MARK only) is replaced, not kept beside
    (gone, new) = meshdocker.docker_user_plan((-7,), wanted=True)
    assert gone["delete"]["rule"]["handle"] == 7 and "insert" in new
    assert meshdocker.docker_user_plan(None, wanted=True) == []  # iptables-legacy: say so
    gone = meshdocker.docker_user_plan((7, 9), wanted=False)
    assert [c["delete"]["rule"]["handle"] for c in gone] == [7, 9]


def test_a_process_listening_on_a_published_port_is_reported() -> None:
    m = mesh.balance(view())
    listeners = [("tcp", "127.0.0.1", 1080), ("udp", "0.0.0.0", 1080), ("tcp", "0.0.0.0", 22)]
    assert mesh.listener_conflicts(m, listeners) == ()  # loopback only, other protocol or port
    (why,) = mesh.listener_conflicts(m, [*listeners, ("tcp", "::", 1080)])
    assert why.startswith("tcp/1080 is also listened on here by another process (::)")


def test_proc_net_listeners_are_parsed() -> None:
    from pyoverlay.driver.kernel import procnet

    tcp = (
        "  sl  local_address rem_address   st\n"
        "   0: 00000000:0438 00000000:0000 0A 0\n"  # 0.0.0.0:1080 LISTEN
        "   1: 0100007F:0050 0200007F:9C40 01 0\n"  # established: not a listener
    )
    assert procnet.parse(tcp, "tcp") == {("tcp", "0.0.0.0", 1080)}
    tcp6 = "  sl  local\n   0: 00000000000000000000000000000000:0438 0000:0000 0A 0\n"
    assert procnet.parse(tcp6, "tcp", v6=True) == {("tcp", "::", 1080)}


def _rules(cmds: mesh.Commands, chain: str) -> list[list[object]]:
    return [
        c["add"]["rule"]["expr"]
        for c in cmds
        if c.get("add", {}).get("rule", {}).get("chain") == chain
    ]


def test_an_encrypted_services_hop_is_marked_for_esp_and_checked_both_ways() -> None:
    plain = mesh.build(mesh.balance(view()))
    secure = mesh.build(mesh.balance(view(secure=frozenset({"web"}))))
    assert not _rules(plain, "esp-out") and not _rules(plain, "marked")  # no ESP: no cost
    (port,) = _rules(secure, "port-tcp-1080")
    assert {"mangle": {"key": {"ct": {"key": "mark"}}, "value": mesh.SECURE}} in port
    (out,) = _rules(secure, "esp-out")  # SECURE to a member, TCP or UDP (not the ESP)
    assert {"jump": {"target": "esp-check"}} in out and repr(mesh.SECURE) in repr(out)
    assert [r[-1] for r in _rules(secure, "esp-check")] == [{"return": None}, {"drop": None}]
    assert [r[-1] for r in _rules(secure, "esp-in")] == [{"return": None}, {"drop": None}]
    assert "'dir': 'out'" in repr(_rules(secure, "esp-check")[0])
    assert "'dir': 'in'" in repr(_rules(secure, "esp-in")[0])
    # a member's SECURE packet is checked before the mark DOCKER-USER accepts is set
    first, clamp, _ = _rules(secure, "forwarded")
    assert first[-1] == {"jump": {"target": "esp-in"}}
    # SYN and SYN-ACK of the hop lowered to what fits a 1500 underlay with ESP (else bulk
    # data stalled: a client behind the NAT never learnt the path MTU), ours too
    mss = {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": 1420}}
    assert clamp[-1] == mss and mesh.balance(view(secure=frozenset({"web"}))).mss == 1420
    assert _rules(secure, "marked")[-1][-1] == mss
    assert mesh.balance(view()).mss == 0
    assert mesh.digest(mesh.balance(view(secure=frozenset({"web"})))) != mesh.digest(
        mesh.balance(view())
    )
