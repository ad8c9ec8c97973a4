"""Kernel identifiers pyoverlay owns and two of its parts share: one sets a mark, the
other selects it (the routing mesh marks its encrypted hop, the IPsec keeper's xfrm
policy selects that mark and its SAs carry the reqid)."""

REQID = 0x7079E5  # ours; Docker's overlay owns mark 0xD0C4E3 and deletes states carrying it
MESH = 0x6D657368  # "mesh": connections the routing mesh balanced (accepted in DOCKER-USER)
# MESH + 1: those of a service on an encrypted network, whose hop between nodes one xfrm
# policy per peer selects (ESP). One mask, MESH_MASK, matches both: the DOCKER-USER rule
# stays one iptables can print (`-m mark --mark 0x6d657368/0xfffffffe`)
MESH_ESP = MESH + 1
MESH_MASK = 0xFFFFFFFE
