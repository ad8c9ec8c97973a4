"""`pyoverlay plugin` listens on Docker's socket before its heavy imports (dockerd kills a
managed plugin whose socket is not there within ~12.5 s; the imports alone take 7 s in
an emulated VM), and answers Docker's handshake before start-up is done (dockerd gives
up on a driver whose GetCapabilities takes 30 s: every later `network create` fails)."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyoverlay.cli.entry import socket_path

PROBE = """
import http.client, json, socket, sys
path = sys.argv[1]
sys.argv = ["pyoverlay", "plugin", "--socket", path, "--scope", "global", "--advertise-addr", "x"]
import pyoverlay.cli.entry as entry
entry.start_early(sys.argv[1:])
heavy = [m for m in ("aiohttp", "pydantic", "pyroute2") if m in sys.modules]
c = socket.socket(socket.AF_UNIX)
c.connect(path)  # what dockerd's dial does
c.close()
conn = http.client.HTTPConnection("plugin", timeout=10)
conn.sock = socket.socket(socket.AF_UNIX)
conn.sock.connect(path)
conn.request("POST", "/NetworkDriver.GetCapabilities", body=b"null\\n")
print("capabilities:", json.loads(conn.getresponse().read()))
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
    assert "capabilities: {'Scope': 'global', 'ConnectivityScope': 'global'}" in r.stdout
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
    early = prebound.take(path)
    assert early is not None and prebound.take(path) is None
    assert early.waiting == [] and early.answered == []
    early.listener.close()


def post(path: Path, call: str, body: bytes = b"null\n", timeout: float = 10) -> Any:
    """What Docker's plugin client does: one POST, JSON back."""
    conn = http.client.HTTPConnection("plugin", timeout=timeout)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(timeout)
    conn.sock.connect(str(path))
    try:
        conn.request("POST", call, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type", "").startswith(
            "application/vnd.docker.plugins.v1+json"
        )
        return json.loads(resp.read())
    finally:
        conn.close()


def test_the_handshake_is_answered_before_the_server_starts(tmp_path: Path) -> None:
    from pyoverlay.plugin import handshake, prebound

    path = tmp_path / "h.sock"
    prebound.listen_early(str(path), handshake.answers("local"))
    try:
        assert post(path, "/Plugin.Activate", b"") == {
            "Implements": ["NetworkDriver", "IpamDriver"]
        }
        assert post(path, "/NetworkDriver.GetCapabilities") == {
            "Scope": "local",
            "ConnectivityScope": "local",
        }
        assert post(path, "/IpamDriver.GetCapabilities")["RequiresMACAddress"] is False
        spaces = post(path, "/IpamDriver.GetDefaultAddressSpaces")
        assert spaces["LocalDefaultAddressSpace"] == "pyoverlay-local"
        # a request sent in two writes (header first) is answered once it is whole
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(str(path))
            c.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 5\r\n")
            c.sendall(b"\r\nnull\n")
            reply = c.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200 OK") and b"NetworkDriver" in reply
    finally:
        early = prebound.take(path)
        assert early is not None
        early.listener.close()
    assert len(early.answered) == 5 and early.waiting == []


def test_other_calls_wait_unread_and_the_server_answers_them(tmp_path: Path) -> None:
    """CreateNetwork during start-up is not refused or lost: it is answered by the real
    server once it takes the socket over - on the same connection Docker opened."""
    from aiohttp import web

    from pyoverlay.plugin import handshake, prebound
    from pyoverlay.plugin.server import serve_waiting

    path = tmp_path / "w.sock"
    prebound.listen_early(str(path), handshake.answers("global"))
    got: dict[str, Any] = {}

    def client() -> None:
        try:
            got["reply"] = post(path, "/NetworkDriver.CreateNetwork", b'{"NetworkID": "n1"}', 30)
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            got["error"] = e

    waiter = threading.Thread(target=client)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not got  # no answer while starting up
    assert post(path, "/Plugin.Activate")["Implements"]  # the handshake is not held up

    async def handler(request: web.Request) -> web.Response:
        seen = (await request.json())["NetworkID"]
        return web.json_response({"seen": seen}, content_type=handshake.CONTENT_TYPE)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/NetworkDriver.CreateNetwork", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        early = prebound.take(path)
        assert early is not None and len(early.waiting) == 1
        await web.SockSite(runner, early.listener).start()
        await serve_waiting(runner, early)
        await asyncio.get_running_loop().run_in_executor(None, waiter.join, 30)
        await runner.cleanup()

    asyncio.run(serve())
    assert got == {"reply": {"seen": "n1"}}


def post_status(path: Path, call: str, body: bytes = b"{}") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("plugin", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(path))
    try:
        conn.request("POST", call, body=body)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def stderr_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> str:
    """The first line of the child's stderr holding `pattern`, waited for at most
    `timeout` seconds (a child stalled before printing fails the test, not hangs it)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if pattern in line:
            return line
    raise AssertionError(f"no {pattern!r} on stderr within {timeout} s: {seen!r}")


def test_a_managed_plugin_with_a_wrong_setting_answers_docker_with_the_fix(
    tmp_path: Path,
) -> None:
    """As a managed plugin (PYOVERLAY_MANAGED=1, from config.json) a wrong setting does not
    end the process (dockerd would restart it, and the user would read "could not resolve
    driver"): the handshake is answered, and every other call gets the error, naming the
    setting as `docker plugin set` takes it, which Docker prints (`docker network
    create`). A request too large for a Docker call is closed, not read. SIGTERM (`docker
    plugin disable`) ends it and removes the socket file."""
    sock = tmp_path / "p.sock"
    exe = Path(sys.executable).with_name("pyoverlay")
    env = {"PYOVERLAY_MANAGED": "1", "PATH": "/usr/bin:/bin"}
    cmd = [str(exe), "plugin", "--socket", str(sock), "--state-dir", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--scope", "x"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        # written before it answers anything
        stderr_line(proc, "pyoverlay cannot start: PYOVERLAY_SCOPE 'x' must be local")
        status, caps = post_status(sock, "/NetworkDriver.GetCapabilities")
        assert status == 200 and caps["Scope"] == "local"
        status, err = post_status(sock, "/NetworkDriver.CreateNetwork", b'{"NetworkID": "n1"}')
        assert status == 500
        assert err["Err"].startswith("pyoverlay cannot start: PYOVERLAY_SCOPE 'x' must be")
        assert "docker plugin set PLUGIN NAME=VALUE" in err["Err"] and "--" not in err["Err"]
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            post_status(sock, "/IpamDriver.RequestPool", b"x" * 100_000)
        status, err = post_status(sock, "/IpamDriver.RequestPool", b"{}")
        assert status == 500 and "PYOVERLAY_SCOPE" in err["Err"]  # still answering
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0 and not sock.exists()


def test_a_wrong_value_on_the_host_side_still_exits_so_dockerd_retries(tmp_path: Path) -> None:
    """What depends on the host at start (a key file not there yet, an address not yet
    assigned) is not a permanent refusal: the process exits with the error, dockerd
    restarts it, and a moment later it may start."""
    sock = tmp_path / "p.sock"
    exe = Path(sys.executable).with_name("pyoverlay")
    env = {"PYOVERLAY_MANAGED": "1", "PATH": "/usr/bin:/bin"}
    missing = tmp_path / "no-such.key"
    r = subprocess.run(
        [str(exe), "plugin", "--socket", str(sock), "--state-dir", str(tmp_path / "s"),
         "--gossip-key-file", str(missing), "--advertise-addr", "127.0.0.1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and f"--gossip-key-file {missing}" in r.stderr, r.stderr
    assert not sock.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--scope", "x"),
        ("--gossip-port", "4789"),
        ("--join", "10.0.0.1"),
        ("--advertise-addr", "nope"),
        ("--log-format", "xml"),
        ("--vxlan-port", "99999"),
        ("--network-setup", "slow"),
        ("--gossip-probe-interval", "0.1"),
    ],
)
def test_every_settings_error_reads_in_plugin_setting_names(flag: str, value: str) -> None:
    import argparse

    from pyoverlay.core.errors import InvalidOption
    from pyoverlay.plugin import settings

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    with pytest.raises(InvalidOption) as exc:
        settings.from_namespace(parser.parse_args([flag, value]))
    text = settings.as_plugin_settings(str(exc.value))
    env = "PYOVERLAY_" + flag[2:].replace("-", "_").upper()
    assert "--" not in text and text.startswith(env), text
    assert f"{env} (" not in text and "=" not in text.split(" ")[0], text


def test_the_probe_interval_setting_and_bad_values_name_the_range() -> None:
    import argparse

    from pyoverlay.core.errors import InvalidOption
    from pyoverlay.plugin import settings

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    assert settings.from_namespace(parser.parse_args([])).gossip_probe_interval == 0.5
    got = settings.from_namespace(parser.parse_args(["--gossip-probe-interval", "1"]))
    assert got.gossip_probe_interval == 1.0
    for bad in ("0.1", "3", "fast"):
        with pytest.raises(InvalidOption) as exc:
            settings.from_namespace(parser.parse_args(["--gossip-probe-interval", bad]))
        assert str(exc.value) == f"--gossip-probe-interval {bad!r} must be a number from 0.5 to 2"
