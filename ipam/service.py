"""Docker's IpamDriver calls: RequestPool/ReleasePool, RequestAddress/ReleaseAddress.

Pools:
* `--subnet` (+ optional `--ip-range`, `--gateway`, `--aux-address`) as given;
  a subnet that overlaps another pyoverlay pool on this host is refused;
* without `--subnet`, the first free /24 of DEFAULT_RANGE (10.200.0.0/16) -
  on a single host only: in a cluster the subnet names the network on every
  host, so it must come from the user (refused with a clear message).

IPv6 (`--ipv6`): a second pool per network, asked for with V6 and an IPv6 `--subnet`
(a /48 to /120; no default IPv6 pool), cut into /120 blocks (blocks.py); the same rules
as IPv4 otherwise. Refused on swarm-scope networks (core/ip.py V6_SWARM says why).

Swarm networks (`--scope swarm` with `--ipam-driver pyoverlay:latest`, or a stack
file naming it): swarm allocates on its leader only (swarmkit's allocator, on the
leader, calls RequestPool in the global address space and RequestAddress for the
gateway, every VIP and task), keeps the result in raft, and a new leader asks
again for every pool and address it recorded. So the leader's pool is plain
(no cluster-wide blocks: raft already makes the addresses unique); a repeated
RequestPool of a pool starts it afresh (a new allocator restores into it). A
node that runs a task asks its own plugin in the local address space, with the
leader's subnet and addresses preset: once the network is known to be swarm's
(CreateNetwork), its addresses are recorded as given, never claimed.

Addresses: the gateway is reserved first (the given --gateway, else the
subnet's first host address); aux addresses are reserved as given - both
are the network's own, the same on every host, never cluster claims (Docker
asks for them between RequestPool and CreateNetwork: the pool is not `live`
yet); endpoints get the requested --ip (any free address of the subnet, on
any host: borrowed from the block's owner if another host owns it) or the
next free one (round-robin, see allocator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Protocol

import structlog

from pyoverlay.core.errors import Conflict, Exhausted, InvalidOption, NotFound, PyoverlayError
from pyoverlay.core.ip import V6_SWARM, IPAddr, IPNet
from pyoverlay.core.store import JsonDocument
from pyoverlay.ipam.allocator import (
    ENDPOINT,
    GATEWAY,
    LENT,
    RESERVED,
    Pool,
    claim,
    first_host,
    next_free,
    release,
)
from pyoverlay.ipam.spaces import GLOBAL_SPACE, LOCAL_SPACE

log = structlog.get_logger("pyoverlay.ipam")

DEFAULT_RANGE = IPv4Network("10.200.0.0/16")
DEFAULT_PREFIX = 24
GATEWAY_REQUEST = "com.docker.network.gateway"
REQUEST_TYPE = "RequestAddressType"


class AddressGuard(Protocol):
    """Says whether this host may hand out an address, and gets it more (cluster-wide IPAM)."""

    clustered: bool

    def may_allocate(self, subnet: IPNet, ip: IPAddr) -> bool: ...

    def spans(self, subnet: IPNet) -> list[IPNet] | None:
        """The parts of `subnet` this host allocates from (None: all of it)."""
        ...

    async def claim(self, subnet: IPNet, want: IPAddr | None, within: IPNet | None = None) -> None:
        """Make this host own more of `subnet` (the part holding `want`, or a part inside
        `within`), or raise why not."""
        ...

    async def release_subnet(self, subnet: IPNet) -> None: ...

    async def give_back(self, subnet: IPNet, ip: IPAddr) -> None:
        """An address borrowed from another host's block is free again."""
        ...

    def to_json(self) -> dict[str, object]: ...

    def load(self, d: dict[str, object]) -> None: ...


class LocalGuard:
    """Single host: every address of a pool is ours."""

    clustered = False

    def may_allocate(self, subnet: IPNet, ip: IPAddr) -> bool:
        return True

    def spans(self, subnet: IPNet) -> list[IPNet] | None:
        return None

    async def claim(self, subnet: IPNet, want: IPAddr | None, within: IPNet | None = None) -> None:
        raise Exhausted(f"no free address left in {subnet}")

    async def release_subnet(self, subnet: IPNet) -> None:
        return None

    async def give_back(self, subnet: IPNet, ip: IPAddr) -> None:
        return None

    def to_json(self) -> dict[str, object]:
        return {}

    def load(self, d: dict[str, object]) -> None:
        return None


class IpamService:
    def __init__(self, state_file: Path, guard: AddressGuard | None = None) -> None:
        self.doc = JsonDocument(state_file)
        self.guard: AddressGuard = guard or LocalGuard()
        self.pools: dict[str, Pool] = {}
        self._lock = asyncio.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipam-save")

    def load(self) -> None:
        d = self.doc.load()
        self.pools = {k: Pool.from_json(v) for k, v in (d.get("pools") or {}).items()}
        self.guard.load(d.get("ownership") or {})

    def _render(self) -> str:
        return self.doc.render(
            {
                "pools": {k: v.to_json() for k, v in self.pools.items()},
                "ownership": self.guard.to_json(),
            }
        )

    def save(self) -> None:
        """Durable when it returns (Docker's requests are answered after it)."""
        self._writer.submit(self.doc.write, self._render()).result()

    async def save_async(self) -> None:
        """Durable when it returns, without holding up the event loop (a peer's RPC is
        answered after it; gossip goes on meanwhile). One writer thread takes every
        save in order, so a later state is never overwritten by an earlier one."""
        await asyncio.wrap_future(self._writer.submit(self.doc.write, self._render()))

    def _commit(self, undo: Callable[[], object]) -> None:
        """Save, or put the in-memory state back (via `undo()`) and re-raise."""
        try:
            self.save()
        except PyoverlayError:
            undo()
            raise

    def pool(self, pool_id: str) -> Pool:
        p = self.pools.get(pool_id)
        if p is None:
            raise NotFound(f"pool {pool_id!r} is not known to pyoverlay's IPAM on this host")
        return p

    # -- pools ---------------------------------------------------------------

    def request_pool(
        self, space: str, pool: str, sub_pool: str, options: Mapping[str, str], v6: bool
    ) -> Pool:
        unknown = sorted(k for k in options if not k.startswith("com.docker.network."))
        if unknown:
            raise InvalidOption(
                "unknown IPAM option "
                + ", ".join(f"--ipam-opt {k}={options[k]}" for k in unknown)
                + "; pyoverlay's IPAM takes no options"
            )
        leader = space == GLOBAL_SPACE
        if pool:
            subnet = _network("--subnet", pool)
            _check_family(subnet, v6, leader)
        elif v6:
            raise InvalidOption(
                "--ipv6 needs an IPv6 --subnet (for example --subnet fd00:100::/64 beside the "
                "IPv4 one): pyoverlay has no default IPv6 pool, since the subnet names the "
                "network on every host"
            )
        elif leader:
            subnet = self._default_subnet(GLOBAL_SPACE)  # the leader alone picks swarm's
        elif self.guard.clustered:
            raise InvalidOption(
                "in a pyoverlay cluster a network needs --subnet: the subnet names the network "
                "on every host (the same --subnet on two hosts is the same network), so a "
                "per-host default could merge two different networks"
            )
        else:
            subnet = self._default_subnet()
        ip_range = _network("--ip-range", sub_pool) if sub_pool else None
        if ip_range is not None and (
            ip_range.version != subnet.version or not ip_range.subnet_of(subnet)  # type: ignore[arg-type]
        ):
            raise InvalidOption(f"--ip-range {ip_range} is not inside --subnet {subnet}")
        pool_id = f"{space or LOCAL_SPACE}:{subnet}" + (f":{ip_range}" if ip_range else "")
        for other in self.pools.values():
            same_space = other.pool_id.split(":", 1)[0] == pool_id.split(":", 1)[0]
            if leader and other.pool_id == pool_id:
                continue  # a (new) swarm leader's allocator asks again: it starts afresh
            if same_space and other.subnet.overlaps(subnet):
                raise Conflict(
                    f"--subnet {subnet} overlaps {other.subnet}, already used by another "
                    "pyoverlay network on this host; pick a different --subnet"
                )
        before = self.pools.get(pool_id)
        p = Pool(pool_id, subnet, ip_range, live=False, swarm="leader" if leader else "")
        self.pools[pool_id] = p

        def undo() -> None:
            if before is None:
                self.pools.pop(pool_id, None)
            else:
                self.pools[pool_id] = before

        self._commit(undo)
        log.info("pool requested", pool=pool_id)
        return p

    def _default_subnet(self, space: str = LOCAL_SPACE) -> IPv4Network:
        mine = [p for p in self.pools.values() if p.pool_id.startswith(f"{space}:")]
        for candidate in DEFAULT_RANGE.subnets(new_prefix=DEFAULT_PREFIX):
            if not any(p.subnet.overlaps(candidate) for p in mine):
                return candidate
        raise Exhausted(
            f"every /{DEFAULT_PREFIX} of pyoverlay's default range {DEFAULT_RANGE} is in use; "
            "pass --subnet"
        )

    def network_created(self, space: str, subnet: str, swarm: bool = False) -> None:
        """The driver made the network of this pool: from now on a specific address
        is a container's (--ip), not the network's own (--aux-address); on a swarm
        network, one the leader chose (recorded, never claimed)."""
        changed = False
        for p in self.pools.values():
            if str(p.subnet) != subnet or not p.pool_id.startswith(f"{space}:"):
                continue
            if not p.live:
                p.live = changed = True
            if swarm and not p.swarm:
                p.swarm = "node"
                changed = True
        if changed:
            self.save()

    # -- loans (called by the cluster guard for another host's --ip) -----------------

    def lend(self, subnet: IPNet, ip: IPAddr, borrower: str) -> str | None:
        """Reserve `ip` of our pool for another host's container; None, or why not."""
        p = next((p for p in self.pools.values() if p.subnet == subnet), None)
        if p is None:
            return f"this host has no pool for {subnet}"
        holder = p.allocated.get(ip)
        if holder is not None:
            return f"{ip} is in use there ({holder})"
        if not p.usable(ip):
            return f"{ip} is not a usable address of {subnet}"
        p.allocated[ip] = LENT + borrower
        return None  # the guard saves the document (pools included)

    def unlend(self, subnet: IPNet, ip: IPAddr, borrower: str) -> None:
        for p in self.pools.values():
            if p.subnet == subnet and p.allocated.get(ip) == LENT + borrower:
                del p.allocated[ip]

    async def release_pool(self, pool_id: str) -> None:
        p = self.pool(pool_id)
        del self.pools[pool_id]
        self._commit(lambda: self.pools.__setitem__(pool_id, p))
        if not p.swarm:
            await self.guard.release_subnet(p.subnet)
        self.save()
        log.info("pool released", pool=pool_id)

    # -- addresses -----------------------------------------------------------

    async def request_address(
        self, pool_id: str, address: str, options: Mapping[str, str] | None
    ) -> tuple[IPAddr, int]:
        async with self._lock:
            return await self._request_address(pool_id, address, options)

    async def _request_address(
        self, pool_id: str, address: str, options: Mapping[str, str] | None
    ) -> tuple[IPAddr, int]:
        p = self.pool(pool_id)
        opts = options or {}
        is_gateway = opts.get(REQUEST_TYPE) == GATEWAY_REQUEST
        cursor = p.cursor

        def allowed(a: IPAddr) -> bool:
            return bool(p.swarm) or self.guard.may_allocate(p.subnet, a)

        ip_flag = "--ip6" if p.subnet.version == 6 else "--ip"

        if p.swarm == "node" and not address:
            raise InvalidOption(
                f"pool {pool_id} belongs to a swarm network: its addresses come from the swarm "
                "leader (a task's or an attached container's), none is chosen on a node"
            )

        if address and is_gateway:
            # the gateway lives on every host's br0: it is the same everywhere, not owned
            ip = claim(p, _address("--gateway", address, p.subnet), GATEWAY)
        elif address and not p.live:
            # --aux-address, asked for while the network is being created: the network's own
            ip = claim(p, _address("--aux-address", address, p.subnet), RESERVED)
        elif address:
            ip = _address(ip_flag, address, p.subnet)
            if ip in p.allocated or not p.usable(ip):
                claim(p, ip, ENDPOINT)  # raises the clear "in use" / "outside" error
            if not allowed(ip):
                await self.guard.claim(p.subnet, ip)
            claim(p, ip, ENDPOINT)
        elif is_gateway:
            ip = claim(p, first_host(p.subnet), GATEWAY)
        else:
            p.live = True
            try:
                ip = next_free(
                    p, ENDPOINT, allowed, None if p.swarm else self.guard.spans(p.subnet)
                )
            except Exhausted:
                if not self.guard.clustered or p.swarm:
                    raise
                await self.guard.claim(p.subnet, None, p.ip_range)
                ip = next_free(p, ENDPOINT, allowed, self.guard.spans(p.subnet))

        def undo() -> None:
            release(p, ip)
            p.cursor = cursor

        self._commit(undo)
        log.info("address requested", pool=pool_id, address=str(ip))
        return ip, p.subnet.prefixlen

    async def release_address(self, pool_id: str, address: str) -> None:
        p = self.pool(pool_id)
        ip = _address("address", address, p.subnet)
        purpose = p.allocated.get(ip)
        if release(p, ip):
            assert purpose is not None
            self._commit(lambda: p.allocated.__setitem__(ip, purpose))
            if not p.swarm:
                await self.guard.give_back(p.subnet, ip)
            log.info("address released", pool=pool_id, address=str(ip))


def _network(flag: str, text: str) -> IPNet:
    try:
        net = ip_network(text, strict=False)
    except ValueError as exc:
        raise InvalidOption(f"{flag} {text}: {exc}") from None
    if ip_address(text.split("/")[0]) != net.network_address:  # (FD00::/64 is fd00::/64)
        raise InvalidOption(f"{flag} {text} has host bits set; did you mean {net}?")
    return net


MIN_V6_PREFIX, MAX_V6_PREFIX = 48, 120


def _check_family(subnet: IPNet, v6: bool, leader: bool) -> None:
    """An IPv6 pool: asked for with --ipv6 (swarm's leader asks with V6 false, the family
    is only in the CIDR), in a size pyoverlay's blocks fit."""
    if subnet.version == 4:
        if v6:
            raise InvalidOption(f"--subnet {subnet} is IPv4, but Docker asked for an IPv6 pool")
        return
    if leader:
        raise InvalidOption(f"pyoverlay refuses {V6_SWARM}")
    if not v6:
        raise InvalidOption(
            f"--subnet {subnet} is IPv6: add --ipv6 (and an IPv4 --subnet beside it)"
        )
    if not MIN_V6_PREFIX <= subnet.prefixlen <= MAX_V6_PREFIX:
        raise InvalidOption(
            f"--subnet {subnet}: an IPv6 subnet of pyoverlay is a /{MIN_V6_PREFIX} to "
            f"/{MAX_V6_PREFIX} (a /64 is usual)"
        )


def _address(flag: str, text: str, subnet: IPNet | None = None) -> IPAddr:
    try:
        ip = ip_address(text.split("/")[0])
    except ValueError as exc:
        raise InvalidOption(f"{flag} {text}: {exc}") from None
    if subnet is not None and ip.version != subnet.version:
        raise InvalidOption(
            f"{flag} {text} is IPv{ip.version}, but the pool {subnet} is IPv{subnet.version}"
        )
    return ip
