"""ADAPTER: the local dockerd's API, read-only, for swarm service VIPs.

Never called inside a plugin request (dockerd may be waiting on us): only
background tasks use it.  Answers are bounded in size and time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from pyoverlay.core.errors import PyoverlayError

MAX_BODY = 16 * 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=10)


class DockerUnavailable(PyoverlayError):
    """dockerd's API did not answer, or answered with an error."""


class DockerApi:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)), timeout=TIMEOUT
            )
        return self._session

    async def get(self, path: str) -> Any:
        try:
            async with self._client().get(f"http://docker{path}") as resp:
                body = await resp.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    raise DockerUnavailable(f"dockerd's answer to {path} is over {MAX_BODY} bytes")
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise DockerUnavailable(
                        f"dockerd answered {resp.status} to {path}: {body[:300]!r}"
                    )
                return json.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise DockerUnavailable(f"dockerd at {self.socket}: {exc!r}") from exc

    async def network(self, nid: str) -> dict[str, Any] | None:
        """`docker network inspect --verbose` (Services: VIP and tasks per service)."""
        found = await self.get(f"/networks/{quote(nid, safe='')}?verbose=true&scope=swarm")
        return found if isinstance(found, dict) else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
