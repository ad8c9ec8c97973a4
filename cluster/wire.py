"""Message encoding: compact JSON objects, size-checked both ways.

A message is a dict with a type key "t".  Packets (UDP) carry at most
`packet_budget` bytes of plaintext; streams (TCP push-pull) at most
MAX_STREAM bytes.  Anything else - not JSON, not an object, no known type,
too large - raises WireError and is dropped and counted by the caller.
"""

from __future__ import annotations

import json
from typing import Any

MAX_STREAM = 16 * 1024 * 1024
PACKET_TYPES = {"ping", "ack", "nack", "preq", "gossip"}
STREAM_TYPES = {"pp", "ppr", "rpc", "rpcr", "rows", "rowsr"}


class WireError(Exception):
    pass


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=False).encode()


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not a number pyoverlay sends")


def decode(data: bytes, limit: int, types: set[str]) -> dict[str, Any]:
    if len(data) > limit:
        raise WireError(f"message of {len(data)} bytes is over the {limit}-byte limit")
    try:
        msg = json.loads(data, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("t") not in types:
        raise WireError("not a known message")
    return msg
