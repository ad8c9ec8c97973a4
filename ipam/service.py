"""Docker's IpamDriver calls: RequestPool/ReleasePool, RequestAddress/ReleaseAddress.

Pools:
* `--subnet` (+ optional `--ip-range`, `--gateway`, `--aux-address`) as given;
  a subnet that overlaps another pyoverlay pool on this host is refused;
* without `--subnet`, the first free /24 of DEFAULT_RANGE (10.200.0.0/16).

Addresses: the gateway is reserved first (the given --gateway, else the
subnet's first host address); aux addresses are reserved as given; endpoints
get the requested --ip or the next free one (round-robin, see allocator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Protocol

import structlog

from pyoverlay.state.errors import Conflict, Exhausted, InvalidOption, NotFound, PyoverlayError
from pyoverlay.state.store import JsonDocument

from .allocator import ENDPOINT, GATEWAY, Pool, claim, first_host, next_free, release

log = structlog.get_logger("pyoverlay.ipam")

LOCAL_SPACE = "pyoverlay-local"
GLOBAL_SPACE = "pyoverlay-global"
DEFAULT_RANGE = IPv4Network("10.200.0.0/16")
DEFAULT_PREFIX = 24
GATEWAY_REQUEST = "com.docker.network.gateway"
REQUEST_TYPE = "RequestAddressType"


class AddressGuard(Protocol):
    """Says whether this host may hand out an address (cluster-wide IPAM hooks in here)."""

    def may_allocate(self, subnet: IPv4Network, ip: IPv4Address) -> bool: ...


class LocalGuard:
    """Single host: every address of a pool is ours."""

    def may_allocate(self, subnet: IPv4Network, ip: IPv4Address) -> bool:
        return True


class IpamService:
    def __init__(self, state_file: Path, guard: AddressGuard | None = None) -> None:
        self.doc = JsonDocument(state_file)
        self.guard: AddressGuard = guard or LocalGuard()
        self.pools: dict[str, Pool] = {}

    def load(self) -> None:
        d = self.doc.load()
        self.pools = {k: Pool.from_json(v) for k, v in (d.get("pools") or {}).items()}

    def save(self) -> None:
        self.doc.save({"pools": {k: v.to_json() for k, v in self.pools.items()}})

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
        if v6:
            raise InvalidOption(
                "IPv6 pools are not supported by pyoverlay yet: remove --ipv6 (and IPv6 --subnet)"
            )
        unknown = sorted(k for k in options if not k.startswith("com.docker.network."))
        if unknown:
            raise InvalidOption(
                "unknown IPAM option "
                + ", ".join(f"--ipam-opt {k}={options[k]}" for k in unknown)
                + "; pyoverlay's IPAM takes no options"
            )
        if pool:
            subnet = _network("--subnet", pool)
        else:
            subnet = self._default_subnet()
        ip_range = _network("--ip-range", sub_pool) if sub_pool else None
        if ip_range is not None and not ip_range.subnet_of(subnet):
            raise InvalidOption(f"--ip-range {ip_range} is not inside --subnet {subnet}")
        for other in self.pools.values():
            if other.subnet.overlaps(subnet):
                raise Conflict(
                    f"--subnet {subnet} overlaps {other.subnet}, already used by another "
                    "pyoverlay network on this host; pick a different --subnet"
                )
        pool_id = f"{space or LOCAL_SPACE}:{subnet}" + (f":{ip_range}" if ip_range else "")
        p = Pool(pool_id, subnet, ip_range)
        self.pools[pool_id] = p
        self._commit(lambda: self.pools.pop(pool_id, None))
        log.info("pool requested", pool=pool_id)
        return p

    def _default_subnet(self) -> IPv4Network:
        for candidate in DEFAULT_RANGE.subnets(new_prefix=DEFAULT_PREFIX):
            if not any(p.subnet.overlaps(candidate) for p in self.pools.values()):
                return candidate
        raise Exhausted(
            f"every /{DEFAULT_PREFIX} of pyoverlay's default range {DEFAULT_RANGE} is in use; "
            "pass --subnet"
        )

    def release_pool(self, pool_id: str) -> None:
        p = self.pool(pool_id)
        del self.pools[pool_id]
        self._commit(lambda: self.pools.__setitem__(pool_id, p))
        log.info("pool released", pool=pool_id)

    # -- addresses -----------------------------------------------------------

    def request_address(
        self, pool_id: str, address: str, options: Mapping[str, str] | None
    ) -> tuple[IPv4Address, int]:
        p = self.pool(pool_id)
        opts = options or {}
        is_gateway = opts.get(REQUEST_TYPE) == GATEWAY_REQUEST
        cursor = p.cursor
        if address:
            ip = _address("--gateway" if is_gateway else "--ip", address)
            purpose = GATEWAY if is_gateway else ENDPOINT
            if not self.guard.may_allocate(p.subnet, ip):
                raise Conflict(
                    f"address {ip} belongs to a block another pyoverlay host owns; "
                    "leave --ip out or pick one from this host's blocks"
                )
            claim(p, ip, purpose)
        elif is_gateway:
            ip = claim(p, first_host(p.subnet), GATEWAY)
        else:
            ip = next_free(p, ENDPOINT, lambda a: self.guard.may_allocate(p.subnet, a))

        def undo() -> None:
            release(p, ip)
            p.cursor = cursor

        self._commit(undo)
        log.info("address requested", pool=pool_id, address=str(ip))
        return ip, p.subnet.prefixlen

    def release_address(self, pool_id: str, address: str) -> None:
        p = self.pool(pool_id)
        ip = _address("address", address)
        purpose = p.allocated.get(ip)
        if release(p, ip):
            assert purpose is not None
            self._commit(lambda: p.allocated.__setitem__(ip, purpose))
            log.info("address released", pool=pool_id, address=str(ip))


def _network(flag: str, text: str) -> IPv4Network:
    try:
        net = IPv4Network(text, strict=False)
    except ValueError as exc:
        raise InvalidOption(f"{flag} {text}: {exc}") from None
    if str(net) != text and text.split("/")[0] != str(net.network_address):
        raise InvalidOption(f"{flag} {text} has host bits set; did you mean {net}?")
    return net


def _address(flag: str, text: str) -> IPv4Address:
    try:
        return IPv4Address(text.split("/")[0])
    except ValueError as exc:
        raise InvalidOption(f"{flag} {text}: {exc}") from None
