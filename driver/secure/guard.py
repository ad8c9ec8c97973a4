"""PURE: the guard table (nftables, libnftables JSON) that keeps encrypted VNIs encrypted and
VXLAN of pyoverlay's networks to cluster members.

    table inet pyoverlay_guard (ours alone, in the host namespace)
      chain mark (route, output):  encrypted VNI -> meta mark MARK (the xfrm policies select it)
      chain out (postrouting):     encrypted VNI not `ipsec out reqid REQID` -> counted, dropped
      chain in (input):            encrypted VNI not `ipsec in reqid REQID`  -> counted, dropped
                                   VXLAN from outside @members -> chain non-member:
                                   one of our VNIs -> counted, dropped (others pass)

The rules outlive the plugin process: plain VXLAN of an encrypted VNI never
leaves nor enters while the plugin is down or restarting.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from pyoverlay.driver.secure.sa import MARK, REQID

GUARD_TABLE = "pyoverlay_guard"  # inet table in the host namespace
MEMBERS_SET = "members"
NON_MEMBER_CHAIN = "non-member"  # admission: VXLAN from a non-member, checked for our VNIs
ADMISSION_COUNTER = "admission_drops"
PLAIN_COUNTER = "plain_drops"


def _vxlan(port: int) -> dict[str, Any]:
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "udp", "field": "dport"}},
            "right": port,
        }
    }


def _vni(vni: int) -> dict[str, Any]:
    # VXLAN header: flags 1, reserved 3, VNI 3, reserved 1; after the 8-byte UDP header
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"base": "th", "offset": 96, "len": 24}},
            "right": vni,
        }
    }


def _ipsec(direction: str) -> dict[str, Any]:
    return {
        "match": {
            "op": "==",
            "left": {"ipsec": {"key": "reqid", "dir": direction, "spnum": 0}},
            "right": REQID,
        }
    }


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {
        "add": {
            "rule": {"family": "inet", "table": GUARD_TABLE, "chain": chain, "expr": list(expr)}
        }
    }


CHAINS = (
    # (name, type, hook, priority)
    ("mark", "route", "output", -150),
    ("out", "filter", "postrouting", 10),
    ("in", "filter", "input", 10),
)


def guard_commands(
    port: int,
    encrypted_vnis: Iterable[int],
    members: Iterable[IPv4Address] | None,
    owned_vnis: Iterable[int] = (),
) -> list[dict[str, Any]]:
    """One transaction that makes the guard table exactly this (atomic: there is no moment
    without the rules). `members` None: no admission check (single host). Admission
    applies to pyoverlay's own VNIs (`owned_vnis`) only: Docker's built-in overlay and the
    swarm ingress use the same UDP port, and a node that is not a pyoverlay member must
    keep reaching them."""
    t = {"family": "inet", "table": GUARD_TABLE}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": "inet", "name": GUARD_TABLE}}},
        {"add": {"counter": {**t, "name": ADMISSION_COUNTER}}},
        {"add": {"counter": {**t, "name": PLAIN_COUNTER}}},
        {"add": {"set": {**t, "name": MEMBERS_SET, "type": "ipv4_addr"}}},
        {"flush": {"set": {**t, "name": MEMBERS_SET}}},
        # VXLAN from a non-member jumps here; drops it if the VNI is one of ours
        {"add": {"chain": {**t, "name": NON_MEMBER_CHAIN}}},
        {"flush": {"chain": {**t, "name": NON_MEMBER_CHAIN}}},
    ]
    for name, kind, hook, prio in CHAINS:
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": "inet",
                        "table": GUARD_TABLE,
                        "name": name,
                        "type": kind,
                        "hook": hook,
                        "prio": prio,
                        "policy": "accept",
                    }
                }
            }
        )
        cmds.append({"flush": {"chain": {"family": "inet", "table": GUARD_TABLE, "name": name}}})
    addrs = sorted(set(members or ()))
    if addrs:
        cmds.append(
            {"add": {"element": {**t, "name": MEMBERS_SET, "elem": [str(a) for a in addrs]}}}
        )
    owned = sorted(set(owned_vnis))
    if members is not None and owned:
        # members' VXLAN (every packet of ours) costs one set lookup; only a non-member's
        # is compared with our VNIs (the kernel's nft JSON has no integer sets to use)
        cmds.append(
            _rule(
                "in",
                _vxlan(port),
                {
                    "match": {
                        "op": "!=",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": f"@{MEMBERS_SET}",
                    }
                },
                {"jump": {"target": NON_MEMBER_CHAIN}},
            )
        )
        for vni in owned:
            cmds.append(
                _rule(NON_MEMBER_CHAIN, _vni(vni), {"counter": ADMISSION_COUNTER}, {"drop": None})
            )
    for vni in sorted(set(encrypted_vnis)):
        cmds.append(
            _rule(
                "mark",
                _vxlan(port),
                _vni(vni),
                {"mangle": {"key": {"meta": {"key": "mark"}}, "value": MARK}},
            )
        )
        for chain, direction in (("out", "out"), ("in", "in")):
            cmds.append(_rule(chain, _vxlan(port), _vni(vni), _ipsec(direction), {"accept": None}))
            cmds.append(
                _rule(chain, _vxlan(port), _vni(vni), {"counter": PLAIN_COUNTER}, {"drop": None})
            )
    return cmds


def delete_guard() -> list[dict[str, Any]]:
    return [{"delete": {"table": {"family": "inet", "name": GUARD_TABLE}}}]


def guard_counters(listing: Any) -> dict[str, int]:
    """Packets of the named counters, from `nft -j list table inet GUARD_TABLE`."""
    out: dict[str, int] = {}
    for item in (listing or {}).get("nftables", []) if isinstance(listing, dict) else []:
        c = item.get("counter") if isinstance(item, dict) else None
        if isinstance(c, dict) and "name" in c:
            out[str(c["name"])] = int(c.get("packets", 0))
    return out
