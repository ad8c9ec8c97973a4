"""Docker's handshake: four calls whose answers depend only on --scope.

When a plugin is enabled (and when dockerd starts), dockerd sends Plugin.Activate,
NetworkDriver.GetCapabilities, IpamDriver.GetCapabilities and
IpamDriver.GetDefaultAddressSpaces. Each waits at most 30 s (moby
pkg/plugins/client.go defaultTimeOut), and a failed GetCapabilities is final:
dockerd logs "error getting capability" and never registers the driver, so every
`network create` answers "could not resolve driver ... in registry" until the
plugin is disabled and enabled again. A busy host (an emulated VM under load:
measured 31+ s from exec to serving) needs longer than that to import and
reconcile, so prebound.py answers these four before the server exists and
handlers.py answers them afterwards - from this one table. stdlib only.
"""

from __future__ import annotations

from pyoverlay.ipam.spaces import GLOBAL_SPACE, LOCAL_SPACE

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
SCOPES = ("local", "global")


def answers(scope: str) -> dict[str, dict[str, object]]:
    """Request path -> JSON body."""
    return {
        "/Plugin.Activate": {"Implements": ["NetworkDriver", "IpamDriver"]},
        # global: swarm networks (only managed plugins are accepted for them); a plugin that
        # says global on a non-swarm engine makes every `network create` fail, hence a setting
        "/NetworkDriver.GetCapabilities": {"Scope": scope, "ConnectivityScope": scope},
        "/IpamDriver.GetCapabilities": {
            "RequiresMACAddress": False,
            "RequiresRequestReplay": False,
        },
        "/IpamDriver.GetDefaultAddressSpaces": {
            "LocalDefaultAddressSpace": LOCAL_SPACE,
            "GlobalDefaultAddressSpace": GLOBAL_SPACE,
        },
    }
