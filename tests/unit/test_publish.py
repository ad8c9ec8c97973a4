"""lab/publish.py: what a registry receives for `docker plugin install` is what Docker
20.10 reads back: one gzip layer of the rootfs (names relative to it, owned by root,
directories first, hard links kept), a config with its diff_id, digests that match."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from lab.publish import config_blob, layer


def tree(tmp: Path) -> Path:
    root = tmp / "plugin"
    (root / "rootfs" / "usr" / "bin").mkdir(parents=True)
    (root / "rootfs" / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    os.link(root / "rootfs" / "usr" / "bin" / "tool", root / "rootfs" / "usr" / "bin" / "alias")
    (root / "rootfs" / "bin").symlink_to("usr/bin")
    (root / "config.json").write_text(json.dumps({"Entrypoint": ["/usr/bin/tool"], "x": 1}))
    return root


def test_the_layer_is_the_rootfs_as_docker_pushes_it(tmp_path: Path) -> None:
    t = tree(tmp_path)
    lay = layer(t)
    blob = lay.path.read_bytes()
    assert lay.size == len(blob) and lay.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = gzip.decompress(blob)
    assert lay.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "." and not any(n.startswith("./") or n.startswith("/") for n in names)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/tool")
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    links = {m.name: m.linkname for m in members if m.islnk() or m.issym()}
    assert links["bin"] == "usr/bin"
    assert sorted(links.get(n, "") for n in ("usr/bin/alias", "usr/bin/tool")) == [
        "",
        "usr/bin/alias",
    ]  # the second name of the file is a hard link to the first one packed
    assert layer(t) == lay  # made once per tree, kept beside it


def test_the_config_is_the_manifest_plus_the_layers_diff_id(tmp_path: Path) -> None:
    t = tree(tmp_path)
    raw = config_blob(t, "sha256:abc")
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1  # one compact JSON value
    config = json.loads(raw)
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:abc"]}
    assert config["Entrypoint"] == ["/usr/bin/tool"] and config["x"] == 1
