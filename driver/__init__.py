"""pyoverlay's overlay data plane: the seed's per-network namespace, br0, VTEP and veths.

model.py   values and derived kernel names
options.py `docker network create -o ...` -> NetworkSpec, with errors that say what to fix
ops.py     kernel operations as data
plan.py    PURE: specs (+ a kernel snapshot) -> ops
kernel.py  the Kernel Protocol; pyroute.py is the real one, fake.py the in-memory one
service.py OverlayDriver: Docker's NetworkDriver calls
"""
