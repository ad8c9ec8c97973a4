"""`pyoverlay plugin` listens on Docker's socket before its heavy imports (dockerd kills a
managed plugin whose socket is not there within ~12.5 s; the imports alone take 7 s in
an emulated VM)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyoverlay.cli.entry import socket_path

PROBE = """
import socket, sys
path = sys.argv[1]
sys.argv = ["pyoverlay", "plugin", "--socket", path, "--advertise-addr", "nonsense"]
import pyoverlay.cli.entry as entry
from pyoverlay.plugin import prebound
prebound.listen_early(entry.socket_path(sys.argv[1:]))
heavy = [m for m in ("aiohttp", "pydantic", "pyroute2") if m in sys.modules]
c = socket.socket(socket.AF_UNIX)
c.connect(path)  # what dockerd's dial does
print("heavy:", heavy)
"""


def test_the_socket_listens_before_aiohttp_pydantic_or_pyroute2_are_imported(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "plugins" / "p.sock"
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(sock)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout
    assert not sock.exists()  # never taken by a server: removed at exit


def test_bad_options_leave_no_socket_file(tmp_path: Path) -> None:
    sock = tmp_path / "p.sock"
    exe = Path(sys.executable).with_name("pyoverlay")
    r = subprocess.run(
        [str(exe), "plugin", "--socket", str(sock), "--state-dir", str(tmp_path), "--scope", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "--scope 'x' must be local" in r.stderr, r.stderr
    assert not sock.exists()


def test_socket_path_reads_the_flag_like_argparse(monkeypatch: pytest.MonkeyPatch) -> None:
    assert socket_path(["plugin", "--socket", "/a.sock"]) == "/a.sock"
    assert socket_path(["plugin", "--socket=/b.sock"]) == "/b.sock"
    monkeypatch.setenv("PYOVERLAY_SOCKET", "/c.sock")
    assert socket_path(["plugin"]) == "/c.sock"
    monkeypatch.delenv("PYOVERLAY_SOCKET")
    assert socket_path(["plugin"]) == "/run/docker/plugins/pyoverlay.sock"


def test_a_server_takes_the_early_socket(tmp_path: Path) -> None:
    from pyoverlay.plugin import prebound

    path = tmp_path / "q.sock"
    prebound.listen_early(str(path))
    s = prebound.take(path)
    assert isinstance(s, socket.socket) and prebound.take(path) is None
    s.close()
