"""Publish a managed plugin's directory (config.json + rootfs, as scripts/build-plugin
makes it) to a registry without a dockerd: what `docker plugin push` sends, built here,
so a registry can be filled where no daemon runs (the host side of the Vagrant tier,
every lab of the integration tier from one build).

    python -m lab.publish TREE https://ADDRESS REPO TAG [TAG...] --cacert CA

What Docker 20.10 reads back (moby v20.10.27 plugin/backend_linux.go, fetch_linux.go;
trail in docs/design.md, "Distribution"): a schema2 manifest whose config blob has the
plugin media type and is config.json plus `rootfs.diff_ids`, and one gzip layer of the
rootfs (names relative to it, uid/gid 0, directories before their contents). Every
blob's digest and size are checked on install. The layer is made once per tree and kept
beside it (`.layer.tgz`), since one build is published many times.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import os
import ssl
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.plugin.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: Writable) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@dataclass(frozen=True)
class Layer:
    path: Path
    diff_id: str  # sha256 of the uncompressed tar (what daemons up to 19.03 check)
    digest: str  # sha256 of the gzip blob
    size: int


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def layer(tree: Path) -> Layer:
    """The rootfs as one gzip layer, made once per tree (kept in TREE/.layer.tgz)."""
    path, meta = tree / ".layer.tgz", tree / ".layer.json"
    if meta.exists() and path.exists():
        d = json.loads(meta.read_text())
        return Layer(path, d["diff_id"], d["digest"], d["size"])
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        plain, blob = _pack(tree / "rootfs", tmp)
        out = Layer(path, plain.digest, blob.digest, blob.size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta_tmp = meta.with_suffix(f".{os.getpid()}.tmp")
    meta_tmp.write_text(
        json.dumps({"diff_id": out.diff_id, "digest": out.digest, "size": out.size})
    )
    os.replace(meta_tmp, meta)
    return out


def _pack(rootfs: Path, into: Path) -> tuple[Hashing, Hashing]:
    """tar (names relative to the rootfs, `.` first, directories before their contents,
    owned by root) -> gzip -> `into`; the hashes of the tar and of the gzip."""
    with open(into, "wb") as raw:
        blob = Hashing(raw)
        with gzip.GzipFile(fileobj=blob, mode="wb", mtime=0, compresslevel=6) as gz:
            plain = Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                tar.add(rootfs, arcname=".", recursive=False, filter=_owned_by_root)
                for top, dirs, files in os.walk(rootfs):
                    dirs.sort()
                    for name in [*dirs, *sorted(files)]:
                        full = Path(top) / name
                        arc = str(full.relative_to(rootfs))
                        tar.add(full, arcname=arc, recursive=False, filter=_owned_by_root)
    return plain, blob


def config_blob(tree: Path, diff_id: str) -> bytes:
    """config.json as Docker re-encodes it on push: compact, `rootfs` added."""
    config = json.loads((tree / "config.json").read_text())
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    return json.dumps(config, separators=(",", ":")).encode() + b"\n"


class Registry:
    """The distribution API's few calls a push needs, over TLS with a given CA."""

    def __init__(self, base: str, cacert: Path | None) -> None:
        parts = urlsplit(base)
        self.host = parts.netloc
        self.tls = ssl.create_default_context(cafile=str(cacert) if cacert else None)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | None = None,
        host: str = "",
        **headers: str,
    ) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(host or self.host, context=self.tls, timeout=600)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp
        finally:
            conn.close()

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200

    def put_blob(self, repo: str, digest: str, size: int, body: bytes | IO[bytes]) -> None:
        if self.has_blob(repo, digest):
            return
        start = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", **{"Content-Length": "0"})
        if start.status != 202:
            raise RuntimeError(f"{self.host}: starting an upload of {repo}: HTTP {start.status}")
        if not start.headers.get("Location"):
            raise RuntimeError(f"{self.host}: an upload of {repo} without a Location")
        loc = urlsplit(start.headers["Location"])  # absolute (its host) or a path
        target = f"{loc.path}?{loc.query + '&' if loc.query else ''}digest={digest}"
        done = self.request(
            "PUT",
            target,
            body,
            loc.netloc,
            **{"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if done.status != 201 or done.headers.get("Docker-Content-Digest") != digest:
            raise RuntimeError(f"{self.host}: uploading {digest} to {repo}: HTTP {done.status}")

    def put_manifest(self, repo: str, tag: str, manifest: bytes) -> None:
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            manifest,
            **{"Content-Type": MANIFEST, "Content-Length": str(len(manifest))},
        )
        if r.status != 201:
            raise RuntimeError(f"{self.host}: the manifest of {repo}:{tag}: HTTP {r.status}")


def publish(tree: Path, base: str, repo: str, tags: list[str], cacert: Path | None) -> str:
    """Push the tree as REPO:TAG for each tag; the manifest's digest."""
    lay = layer(tree)
    config = config_blob(tree, lay.diff_id)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    reg = Registry(base, cacert)
    with open(lay.path, "rb") as f:
        reg.put_blob(repo, lay.digest, lay.size, f)
    reg.put_blob(repo, config_digest, len(config), config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": LAYER, "size": lay.size, "digest": lay.digest}],
        },
        separators=(",", ":"),
    ).encode()
    for tag in tags:
        reg.put_manifest(repo, tag, manifest)
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("tree", type=Path)
    ap.add_argument("base", help="https://ADDRESS:PORT")
    ap.add_argument("repo")
    ap.add_argument("tags", nargs="+")
    ap.add_argument("--cacert", type=Path)
    a = ap.parse_args()
    print(publish(a.tree, a.base, a.repo, a.tags, a.cacert))
    return 0


if __name__ == "__main__":
    sys.exit(main())
