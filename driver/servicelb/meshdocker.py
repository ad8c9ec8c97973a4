"""PURE: Docker's side of the routing mesh: the ports a manager's service list
publishes, and the one rule in Docker's DOCKER-USER chain that lets the mesh's
forwarded connections through (meshrules.py has the mesh's own table)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pyoverlay.driver.core.marks import MESH_MASK
from pyoverlay.driver.servicelb.meshrules import MARK, Commands, PublishedPort, is_


def published_ports(service: Mapping[str, Any]) -> tuple[PublishedPort, ...]:
    """Ingress-mode ports of one service from dockerd's `GET /services` (what a manager
    reads); host-mode ports are Docker's own (the bridge driver on docker_gwbridge)."""
    endpoint = service.get("Endpoint") or {}
    out = set()
    for p in endpoint.get("Ports") or [] if isinstance(endpoint, Mapping) else []:
        if not isinstance(p, Mapping) or p.get("PublishMode", "ingress") != "ingress":
            continue
        try:
            out.add(
                PublishedPort(
                    str(p.get("Protocol", "tcp")), int(p["PublishedPort"]), int(p["TargetPort"])
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(sorted(out))


# -- Docker's FORWARD chain ------------------------------------------------------------

DOCKER_USER = ("ip", "filter", "DOCKER-USER")
DOCKER_USER_COMMENT = "pyoverlay mesh 2"  # the rule's version: 2 accepts SECURE too
_VERSIONS = re.compile(r"pyoverlay mesh( \d+)?")  # every version's comment, and nothing else


def docker_user_handles(listing: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    """Handles of our accept rule in DOCKER-USER (`nft -j list table ip filter`), an
    older version's as a negative handle (to be replaced); None when Docker has no
    such chain here (iptables-legacy, or dockerd without iptables): then nothing can be
    added, and FORWARD's own policy decides."""
    if listing is None:
        return None
    chain_seen = False
    handles = []
    for item in listing.get("nftables") or []:
        if not isinstance(item, Mapping):
            continue
        if item.get("chain", {}).get("name") == DOCKER_USER[2]:
            chain_seen = True
        rule = item.get("rule") or {}
        comment = str(rule.get("comment", ""))
        if rule.get("chain") == DOCKER_USER[2] and _VERSIONS.fullmatch(comment):
            handle = int(rule.get("handle", 0))
            handles.append(handle if comment == DOCKER_USER_COMMENT else -handle)
    return tuple(handles) if chain_seen else None


def docker_user_plan(handles: tuple[int, ...] | None, wanted: bool) -> Commands:
    """Insert (first in DOCKER-USER) or delete the rule that accepts the mesh's
    forwarded connections: Docker's FORWARD policy is DROP when dockerd turned
    forwarding on, and an accept in another table cannot override it."""
    family, table, chain = DOCKER_USER
    if handles is None:
        return []
    if wanted and len(handles) == 1 and handles[0] > 0:
        return []
    cmds: Commands = [
        {"delete": {"rule": {"family": family, "table": table, "chain": chain, "handle": abs(h)}}}
        for h in handles
    ]
    if wanted:
        # MARK and SECURE (MARK + 1) under one mask: a set of marks would be a rule that
        # iptables-nft cannot print (it shows it as an accept of everything)
        mark = is_({"&": [{"meta": {"key": "mark"}}, MESH_MASK]}, MARK)
        rule: dict[str, Any] = {"family": family, "table": table, "chain": chain}
        rule["expr"] = [mark, {"counter": None}, {"accept": None}]
        rule["comment"] = DOCKER_USER_COMMENT
        cmds.append({"insert": {"rule": rule}})
    return cmds
