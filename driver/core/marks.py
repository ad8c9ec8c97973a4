"""Kernel identifiers pyoverlay owns and two of its parts share: one sets a mark, the
other selects it (the routing mesh marks its encrypted hop, the IPsec keeper's xfrm
policy selects that mark and its SAs carry the reqid)."""

REQID = 0x7079E5  # ours; Docker's overlay owns mark 0xD0C4E3 and deletes states carrying it
# fwmark of the routing mesh's hop between nodes for a service on an encrypted network
# (set by the mesh table, servicelb/meshrules.py; selected by one xfrm policy per peer)
MESH_MARK = 0x7079E501
