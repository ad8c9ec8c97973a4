"""pyoverlay's own gossip layer: SWIM membership (with Lifeguard) plus a replicated table.

Why our own: a remote Docker driver cannot use Docker's NetworkDB, and the
PyPI SWIM packages lack owner-only incarnations, Lifeguard, encryption or a
table layer (docs/design.md, "gossip").

    config.py      timings (LAN defaults, fast ones for tests)
    keyring.py     AES-GCM keys: first key sends, all keys receive
    wire.py        message encoding with size limits
    membership.py  PURE SWIM + Lifeguard state: alive/suspect/dead/left
    table.py       PURE replicated rows, networkdb-style versions and tombstones
    node.py        PURE: one gossip node; inputs (packets, time) -> outbox, events
    sim.py         in-memory network + fake clock: 200 nodes in seconds
    transport.py   UDP packets + TCP push-pull streams (asyncio)
    runtime.py     asyncio shell that drives a node over a transport

Nothing in the pure modules reads a clock, a socket or random state of its
own: time is an argument, randomness an injected random.Random.
"""
