"""pyoverlay's own gossip layer: SWIM membership (with Lifeguard) plus a replicated table.

Why our own: a remote Docker driver cannot use Docker's NetworkDB, and the
PyPI SWIM packages lack owner-only incarnations, Lifeguard, encryption or a
table layer (docs/design.md, "gossip").

    config.py       timings (LAN defaults, fast ones for tests)
    keyring.py      AES-GCM keys: first key sends, all keys receive
    wire.py         message encoding with size limits
    replay.py       PURE anti-replay stamps (sender, epoch, counter, time)
    membership.py   PURE SWIM + Lifeguard state: alive/suspect/dead/left
    table.py        PURE replicated rows, networkdb-style versions and tombstones
    scoping.py      PURE per-network replication: who takes part in which network
    broadcasts.py   PURE the update queue, freshest first, O(taken) per packet
    hostcheck.py    PURE which silent hosts are still up (their data path is kept)
    nodestate.py    PURE a node's state; taking in member updates and rows
    disseminate.py  PURE packets, gossip rounds, updates too large for a packet
    probe.py        PURE the probe cycle
    antientropy.py  PURE push-pull, network fetches, reconnects
    node.py         PURE one gossip node: inputs (packets, time) -> outbox, events
    transport.py    the Transport seam and its UDP + TCP implementation (sealed, stamped)
    runtime.py      the asyncio shell: timers, host checks, the driver's PeerDirectory

Nothing in the pure modules reads a clock, a socket or random state of its
own: time is an argument, randomness an injected random.Random.
"""
