"""The driver's shared types and seams (no I/O).

model.py       NetworkSpec, EndpointSpec, Underlay and the kernel names derived from them
options.py     `docker network create -o ...` -> NetworkSpec, errors that say what to fix
ops.py         kernel operations as data (and how to undo each)
interfaces.py  the Protocols the subsystems are written against: Kernel, RuleTables,
               NetworkGuard, ServiceRules
directory.py   PeerDirectory: the replicated table as the driver sees it (LocalDirectory
               on a single host)
marks.py       kernel ids two parts share: the xfrm reqid, the mesh's fwmarks
"""
