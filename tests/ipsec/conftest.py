"""IPsec tier: three lab hosts inside a virtme-ng VM with a full kernel (scripts/test-ipsec-vm).

Outside that VM (this machine's kernel has no ESP) the tier is skipped, and
in CI it is an error to get here without ESP.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_root

from lab.hosts import Lab

ROTATION = "6"
REKEY = "300"


def kernel_has_esp() -> bool:
    key = "0x" + "00" * 36
    add = subprocess.run(
        ["ip", "-batch", "-"],
        input="xfrm state add src 127.0.0.1 dst 127.0.0.3 proto esp spi 0x7079 reqid 1 "
        f"mode transport aead 'rfc4106(gcm(aes))' {key} 128\n",
        capture_output=True,
        text=True,
    )
    subprocess.run(
        [
            "ip",
            "xfrm",
            "state",
            "delete",
            "src",
            "127.0.0.1",
            "dst",
            "127.0.0.3",
            "proto",
            "esp",
            "spi",
            "0x7079",
        ],
        capture_output=True,
    )
    return add.returncode == 0


@pytest.fixture(scope="session")
def esp() -> None:
    """Skips outside the IPsec tier's VM; fails inside it if the kernel cannot do ESP."""
    require_root()
    if os.environ.get("PYOVERLAY_IPSEC_TIER") != "1" or not kernel_has_esp():
        if os.environ.get("PYOVERLAY_IPSEC_TIER") == "1":
            pytest.fail("this kernel cannot do ESP with AES-GCM (esp4, xfrm_user)")
        pytest.skip("needs a kernel with ESP: run scripts/test-ipsec-vm")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, esp: None) -> Iterator[Lab]:
    lab = Lab(
        "e" + secrets.token_hex(2),
        hosts=3,
        # a plugin idles at 0.62 % of a core on this machine with the integration tier's
        # 0.5 s probes and 5 s push-pulls and reconciles, and at 23 % of a guest CPU under
        # emulation: three of them were half of the guest's idle load. With 2 s probes
        # and the defaults' 30 s: 0.18 % (no test here waits on a push-pull or reconcile)
        plugin_args=(
            "--gossip-probe-interval",
            "2",
            "--gossip-pushpull",
            "30",
            "--reconcile-interval",
            "30",
            "--ipsec-rotation",
            ROTATION,
            "--ipsec-rekey-packets",
            REKEY,
        ),  # fmt: skip
    )
    try:
        yield lab.up()
    finally:
        logs = Path(".vng")  # the VM's one writable directory of the checkout
        if logs.is_dir():
            for h in lab.hosts:
                (logs / f"{h.name}-plugin.log").write_text(h.plugin_log())
        if request.session.testsfailed:
            for h in lab.hosts:
                print(f"--- plugin log {h.name} (tail) ---\n{h.plugin_log()[-6000:]}")
        problems = lab.down()
        assert not problems, problems
