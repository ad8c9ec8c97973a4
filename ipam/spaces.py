"""The IPAM driver's two address spaces (stdlib only: the handshake answers them
before anything heavy is imported)."""

from __future__ import annotations

LOCAL_SPACE = "pyoverlay-local"  # both start with driver.identity.OWN_SPACE_PREFIX
GLOBAL_SPACE = "pyoverlay-global"
