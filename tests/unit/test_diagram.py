"""`pyoverlay diagram`: container boxes stay aligned whatever the names (swarm task names)."""

from __future__ import annotations

from typing import Any

from pyoverlay.cli.diagram import draw

STATUS = {"vtep": "192.168.99.2", "node": "687b7185", "networks": []}


def network_view(**parts: Any) -> dict[str, Any]:
    """What /peers returns for one network, with `parts` replaced."""
    view = {
        "network": "a27ycqwyl5xx",
        "vni": 11292642,
        "subnet": "100.0.0.0/24",
        "gateway": "100.0.0.1/24",
        "namespace": "1-a27ycqwyl5",
        "vxlan": "pvxac4fe2-a27yc",
        "peers": [],
    }
    return view | parts


def test_long_container_names_fit_their_boxes() -> None:
    view = network_view(
        peers=[
            {
                "endpoint": "e1",
                "ip": "100.0.0.3",
                "mac": "02:42:64:00:00:03",
                "vtep": "x",
                "state": "local",
            },
            {
                "endpoint": "e2",
                "ip": "100.0.0.5",
                "mac": "02:42:64:00:00:05",
                "vtep": "x",
                "state": "local",
            },
        ]
    )
    names = {"e1": ("web.1.2bkc9je3xyz", "172.18.0.3"), "e2": ("kv", "172.18.0.4")}
    lines = draw(STATUS, view, names, "172.18.0.1/16").splitlines()
    boxes = [line for line in lines if line.lstrip().startswith("| ")]
    edges = [line for line in lines if line.lstrip().startswith("+---+")]
    assert boxes and edges
    # every side of a box sits on a corner of its top edge (a long name would push it out)
    corners = {i for i, c in enumerate(edges[0]) if c == "+"}
    for line in boxes:
        assert {i for i, c in enumerate(line) if c == "|"} <= corners, (line, edges[0])
    assert "web.1.2bkc" in boxes[0] and "kv" in boxes[0]


def test_service_vips_are_drawn_with_their_tasks() -> None:
    view = network_view(
        services=[
            {
                "vip": "100.0.0.2",
                "service": "node",
                "backends": [{"ip": "100.0.0.7", "endpoint": "e7", "host": "192.168.99.3"}]
                + [{"ip": "100.0.0.8", "endpoint": "e8", "host": "192.168.99.4"}],
            }
        ]
    )
    text = draw(STATUS, view, {}, "")
    assert "service VIPs (nftables DNAT in each container's own namespace)" in text
    assert any(
        line.split() == ["node", "100.0.0.2", "->", "100.0.0.7,", "100.0.0.8"]
        for line in text.splitlines()
    ), text
