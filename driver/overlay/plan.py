"""Pure planning: from what should exist (and what does) to a list of Ops.

Nothing here touches the kernel; every function takes values and returns
ops, so the whole data-path layout is unit-tested without root, and
`reconcile --dry-run` shows exactly what `reconcile` would do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pyoverlay.driver.core.interfaces import KernelSnapshot, LinkView, NamespaceView
from pyoverlay.driver.core.model import (
    BRIDGE_NAME,
    VETH_CONTAINER_PREFIX,
    VETH_OVERLAY_PREFIX,
    VXLAN_PREFIX,
    EndpointSpec,
    NetworkSpec,
    Underlay,
    ownership_marker,
    parse_marker,
)
from pyoverlay.driver.core.ops import (
    CreateNamespace,
    DeleteLink,
    DeleteNamespace,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    Op,
)

NAMESPACE_PATTERN = re.compile(r"^1-[0-9a-z]{10}$")


def bridge_op(net: NetworkSpec, node_id: str) -> EnsureBridge:
    return EnsureBridge(
        ns=net.namespace,
        name=BRIDGE_NAME,
        mtu=net.mtu,
        address=net.gateway,
        alias=ownership_marker(node_id, net.network_id),
        address6=net.gateway6,
    )


def vxlan_op(net: NetworkSpec, underlay: Underlay) -> EnsureVxlan:
    return EnsureVxlan(
        ns=net.namespace,
        name=net.vxlan,
        vni=net.vni,
        port=underlay.port,
        local=underlay.address,
        mtu=net.mtu,
        bridge=BRIDGE_NAME,
    )


def veth_op(net: NetworkSpec, ep: EndpointSpec) -> EnsureVeth:
    return EnsureVeth(
        container_name=ep.container_ifname,
        ns=net.namespace,
        overlay_name=ep.overlay_ifname,
        mtu=net.mtu,
        mac=ep.mac,
        bridge=BRIDGE_NAME,
    )


def create_network(net: NetworkSpec, node_id: str, underlay: Underlay) -> list[Op]:
    """The seed's per-network sandbox: namespace, br0 with the gateway, the VTEP."""
    return [
        CreateNamespace(net.namespace),
        bridge_op(net, node_id),
        vxlan_op(net, underlay),
    ]


def delete_network(net: NetworkSpec) -> list[Op]:
    # The VTEP is deleted first and explicitly: a namespace is destroyed
    # asynchronously by the kernel, and until then its VNI stays taken, so a
    # `network rm` + `network create` of the same subnet would fail with EEXIST.
    # Deleting the namespace then takes br0 and the overlay veth ends with it;
    # the host-side delete covers a create that died mid-move.
    return [
        DeleteLink(net.namespace, net.vxlan),
        DeleteNamespace(net.namespace),
        DeleteLink(None, net.vxlan),
    ]


def join(net: NetworkSpec, ep: EndpointSpec) -> list[Op]:
    return [veth_op(net, ep)]


def delete_endpoint(net_namespace: str | None, ep: EndpointSpec) -> list[Op]:
    """Remove the veth wherever it is: host ns (after Docker moved it back) or the overlay ns."""
    ops: list[Op] = [DeleteLink(None, ep.container_ifname)]
    if net_namespace:
        ops.append(DeleteLink(net_namespace, ep.overlay_ifname))
    return ops


def _vxlan_ok(link: LinkView | None, want: EnsureVxlan) -> bool:
    return (
        link is not None
        and link.kind == "vxlan"
        and link.vni == want.vni
        and link.vxlan_port == want.port
        and link.vxlan_local == want.local
        and link.master == want.bridge
        and link.mtu == want.mtu
        and link.up
    )


def _bridge_ok(link: LinkView | None, want: EnsureBridge) -> bool:
    return (
        link is not None
        and link.kind == "bridge"
        and link.mtu == want.mtu
        and link.up
        and link.alias == want.alias
        and (want.address is None or want.address in link.addresses)
        and (want.address6 is None or want.address6 in link.addresses)
    )


def _veth_ok(ns: NamespaceView, want: EnsureVeth) -> bool:
    overlay_end = ns.links.get(want.overlay_name)
    return (
        overlay_end is not None
        and overlay_end.master == want.bridge
        and overlay_end.up
        and overlay_end.mtu == want.mtu
    )


def reconcile(
    snapshot: KernelSnapshot,
    node_id: str,
    underlay: Underlay,
    networks: Iterable[NetworkSpec],
    endpoints: Iterable[EndpointSpec],
) -> list[Op]:
    """Ops that make the kernel match the persisted state.

    * networks whose namespace, br0 or VTEP is missing or wrong are rebuilt;
    * joined endpoints whose overlay veth end vanished while their container
      end is still in the host ns get it back (a container end already moved
      into a container is beyond our reach: Docker will Leave it);
    * namespaces marked as this node's but owned by no network are deleted,
      as are our links in the host ns that no endpoint or network owns.
    Namespaces of other pyoverlay nodes (other marker) are never touched.
    """
    nets = {n.network_id: n for n in networks}
    eps = list(endpoints)
    ops: list[Op] = []

    for net in nets.values():
        ns = snapshot.namespaces.get(net.namespace)
        want_br = bridge_op(net, node_id)
        want_vx = vxlan_op(net, underlay)
        if ns is None:
            ops.append(CreateNamespace(net.namespace))
            ops += [want_br, want_vx]
            ns = NamespaceView(net.namespace)
        else:
            if not _bridge_ok(ns.links.get(BRIDGE_NAME), want_br):
                ops.append(want_br)
            if not _vxlan_ok(ns.links.get(net.vxlan), want_vx):
                ops.append(want_vx)
        for ep in eps:
            if ep.network_id != net.network_id or not ep.joined:
                continue
            want_veth = veth_op(net, ep)
            if not _veth_ok(ns, want_veth) and (ep.container_ifname in snapshot.host_links):
                ops.append(want_veth)
        wanted_overlay_ends = {e.overlay_ifname for e in eps if e.network_id == net.network_id}
        for name in sorted(ns.links):
            if name.startswith(VETH_OVERLAY_PREFIX) and name not in wanted_overlay_ends:
                ops.append(DeleteLink(net.namespace, name))
            elif name.startswith(VXLAN_PREFIX) and name != net.vxlan:
                ops.append(DeleteLink(net.namespace, name))

    for name, ns in sorted(snapshot.namespaces.items()):
        owner = parse_marker(ns.marker)
        if owner is None or owner[0] != node_id:
            continue
        if owner[1] not in nets or nets[owner[1]].namespace != name:
            ops += [DeleteLink(name, n) for n in sorted(ns.links) if n.startswith(VXLAN_PREFIX)]
            ops.append(DeleteNamespace(name))

    wanted_host = {e.container_ifname for e in eps}
    for name in sorted(snapshot.host_links):
        if name.startswith(VXLAN_PREFIX):
            ops.append(DeleteLink(None, name))
        elif name.startswith(VETH_CONTAINER_PREFIX) and name not in wanted_host:
            ops.append(DeleteLink(None, name))
    return ops
