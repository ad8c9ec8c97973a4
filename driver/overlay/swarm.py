"""Swarm-scoped networks: the VNI is allocated once, on the swarm leader (AllocateNetwork).

What Docker 20.10 does with a global-scope plugin (moby v20.10, daemon/cluster and the
vendored swarmkit allocator; docs/design.md, "Swarm"):

* `docker network create -d pyoverlay:latest --scope swarm ...` on a manager
  makes the swarm **leader** call AllocateNetwork(NetworkID, the user's `-o`
  options, IPv4 pool + gateway).  What it returns is the only thing the
  nodes get: it arrives in every node's CreateNetwork as the generic
  options (the user's `-o` options do not, unless echoed).
* A new leader calls AllocateNetwork again for every network, with our
  earlier answer as input; an old leader never gets FreeNetwork.
* Nodes get CreateNetwork lazily, at their first task or attachable container.

So the leader answers with the user's options echoed plus ALLOCATED_VNI.  A
VNI is derived from the network ID (the same answer on any leader, so a
failover without our state still agrees), moved on if another swarm network
this leader knows already has it, and an incoming ALLOCATED_VNI (or the
user's `-o vni=N`) is always honoured.  Derived VNIs live in the top half of
the 24-bit space, far from the 4096+ range swarm's own overlay (and its
`ingress` network) allocates from on the same UDP port.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from pyoverlay.core.errors import InvalidOption
from pyoverlay.core.store import JsonDocument
from pyoverlay.driver.core.model import DERIVED_VNI_BASE, VNI_MAX, VNI_MIN
from pyoverlay.driver.core.options import (
    ACCEPTED,
    ALLOCATED_VNI,
    OPT_ENCRYPTED,
    OPT_MTU,
    OPT_VNI,
    parse_flag,
)

ECHOED = (OPT_VNI, OPT_MTU, OPT_ENCRYPTED)  # user options that must reach the nodes


def derived_vni(network_id: str, taken: set[int]) -> int:
    """A VNI from the network ID, moved on past VNIs other networks hold."""
    span = VNI_MAX - DERIVED_VNI_BASE + 1
    start = int.from_bytes(hashlib.sha256(network_id.encode()).digest()[:4], "big") % span
    for i in range(span):
        vni = DERIVED_VNI_BASE + (start + i) % span
        if vni not in taken:
            return vni
    raise InvalidOption("every pyoverlay VNI is taken; remove unused swarm networks")


def plan_allocation(
    network_id: str, options: Mapping[str, object], held: Mapping[str, int]
) -> tuple[int, dict[str, str]]:
    """(VNI, the options every node gets) for AllocateNetwork; pure."""
    opts = {str(k): str(v) for k, v in options.items()}
    if OPT_ENCRYPTED in opts:
        parse_flag(OPT_ENCRYPTED, opts[OPT_ENCRYPTED])  # a bad value fails here, on the leader
    unknown = sorted(k for k in opts if k not in ECHOED and k != ALLOCATED_VNI)
    if unknown:
        raise InvalidOption(
            "unknown network option "
            + ", ".join(f"-o {k}={opts[k]}" for k in unknown)
            + f"; pyoverlay accepts {ACCEPTED}"
        )
    taken = {v for nid, v in held.items() if nid != network_id}
    for key in (ALLOCATED_VNI, OPT_VNI):  # an earlier answer (failover), then the user's choice
        if key in opts:
            try:
                vni = int(opts[key])
            except ValueError:
                raise InvalidOption(f"-o {key}={opts[key]}: not a whole number") from None
            if not VNI_MIN <= vni <= VNI_MAX:
                raise InvalidOption(f"-o {key}={opts[key]}: must be from {VNI_MIN} to {VNI_MAX}")
            if key == OPT_VNI and vni in taken and held.get(network_id) != vni:
                raise InvalidOption(f"-o vni={vni} is already used by another swarm network")
            break
    else:
        vni = held.get(network_id) or derived_vni(network_id, taken)
    out = {k: opts[k] for k in ECHOED if k in opts}
    out[ALLOCATED_VNI] = str(vni)
    return vni, out


REFUSALS_KEPT = 20


class SwarmAllocations:
    """The leader's record of allocated VNIs (state-dir/swarm.json), saved atomically."""

    def __init__(self, path: Path) -> None:
        self.doc = JsonDocument(path)
        raw = self.doc.load().get("vnis") or {}
        self.held: dict[str, int] = {str(k): int(v) for k, v in dict(raw).items()}
        # networks this leader refused, and why: Docker shows the user no error (the
        # network is listed, never allocated, its tasks stay "New"), so `pyoverlay status`
        # does; the newest REFUSALS_KEPT, in memory
        self.refused: dict[str, str] = {}

    def refuse(self, network_id: str, why: str) -> None:
        self.refused.pop(network_id, None)
        self.refused[network_id] = why
        while len(self.refused) > REFUSALS_KEPT:
            del self.refused[next(iter(self.refused))]

    def allocate(self, network_id: str, options: Mapping[str, object]) -> dict[str, str]:
        try:
            vni, out = plan_allocation(network_id, options, self.held)
        except InvalidOption as exc:
            self.refuse(network_id, str(exc))
            raise
        self.refused.pop(network_id, None)
        if self.held.get(network_id) != vni:
            self.held[network_id] = vni
            self.doc.save({"vnis": self.held})
        return out

    def free(self, network_id: str) -> None:
        self.refused.pop(network_id, None)
        if self.held.pop(network_id, None) is not None:
            self.doc.save({"vnis": self.held})
