"""Versioned JSON documents under --state-dir, written atomically.

A write goes to a temporary file in the same directory, is fsynced, renamed
over the old file and the directory fsynced, so a crash (or `kill -9`) at any
point leaves either the old or the new document, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pyoverlay.core.errors import StateError

SCHEMA_VERSION = 1


class JsonDocument:
    """One JSON object on disk: load() -> dict, save(dict)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc.strerror}") from exc
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StateError(
                f"state file {self.path} is not valid JSON ({exc}); move it aside to start empty"
            ) from exc
        if not isinstance(doc, dict):
            raise StateError(f"state file {self.path} does not hold a JSON object")
        version = doc.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema version {version}; "
                f"this pyoverlay reads version {SCHEMA_VERSION}"
            )
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        self.write(self.render(doc))

    @staticmethod
    def render(doc: dict[str, Any]) -> str:
        """The document's text (taken where its data lives: the event loop)."""
        return json.dumps({"version": SCHEMA_VERSION, **doc}, indent=1, sort_keys=True)

    def write(self, body: str) -> None:
        """Write rendered text atomically (may run on another thread)."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dfd = os.open(directory, os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StateError(f"cannot write state file {self.path}: {exc.strerror}") from exc
