"""The L2 overlay (the seed's data path): Docker's NetworkDriver calls, one concept per
module; PURE modules decide, the Kernel (driver/kernel) acts.

    plan.py       PURE: specs (+ a kernel snapshot) -> ops for namespaces, links, veths
    peers.py      PURE: remote endpoints (table rows) -> the FDB/ARP entries a VTEP needs
    identity.py   PURE: the network spec every host publishes under its VNI; disagreements
    swarm.py      the VNI the swarm leader allocates (AllocateNetwork), kept across failover
    base.py       the driver's state (driver.json), locks, lookups, apply with roll-back
    peersync.py   rows -> FDB/ARP entries on this host's VTEPs; this host's own rows
    networks.py   CreateNetwork/DeleteNetwork and the lazy sandbox
    endpoints.py  CreateEndpoint/DeleteEndpoint, Join/Leave, a task's service binding
    driver.py     OverlayDriver: those layers, and the reconciler
"""
