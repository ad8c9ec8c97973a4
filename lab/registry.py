"""A plugin registry for a lab: Debian's `docker-registry` (the distribution registry,
2.8) on the lab's underlay, over TLS with a CA made for this lab alone.

The hosts trust it the way users trust a private registry: the CA in
`/etc/docker/certs.d/<address:port>/ca.crt`. Docker reads that directory for
plugin pulls and pushes as for images (moby registry/registry.go newTLSConfig),
but only for a registry it treats as secure, which is every address outside
127.0.0.0/8. Each host gets the file in its own mount namespace (a tmpfs over
certs.d), so nothing is written to this machine's /etc but the empty directory
Docker would look in, if it was missing (left there: removing a directory that is
a mount point in other namespaces would unmount another lab's certificates).

Started without systemd: its own config, storage and log under the lab's
directory, its process killed by pid when the lab's test is done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lab.hosts import LIB_ROOT, ROOT, Host, Lab, sh, wait_for

CERTS_D = Path("/etc/docker/certs.d")
PORT = 5443


def prepare(where: Path, ip: str, store: Path, name: str) -> Path:
    """A registry's TLS (a CA made for it alone, a server certificate for `ip`) and its
    config (listening on ip:PORT, blobs under `store`) in `where`; the config's path.
    `docker-registry serve CONFIG` then runs it (no systemd)."""
    tls = where / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    store.mkdir(parents=True, exist_ok=True)
    ca, key = tls / "ca.crt", tls / "ca.key"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", f"/CN=pyoverlay {name} CA", "-keyout", str(key), "-out", str(ca))  # fmt: skip
    (tls / "san.cnf").write_text(f"subjectAltName=IP:{ip}\n")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}",
       "-keyout", str(tls / "server.key"), "-out", str(tls / "server.csr"))  # fmt: skip
    sh("openssl", "x509", "-req", "-in", str(tls / "server.csr"), "-CA", str(ca),
       "-CAkey", str(key), "-CAcreateserial", "-days", "2",
       "-extfile", str(tls / "san.cnf"), "-out", str(tls / "server.crt"))  # fmt: skip
    config = where / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {store}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {ip}:{PORT}\n"
        f"  tls:\n    certificate: {tls / 'server.crt'}\n"
        f"    key: {tls / 'server.key'}\n"
    )
    return config


class LabRegistry:
    def __init__(self, lab: Lab, store: Path | None = None) -> None:
        self.lab = lab
        self.dir = LIB_ROOT / lab.prefix / "registry"
        self.store = store or self.dir / "data"  # blobs and manifests (shared: Release)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ip(self) -> str:
        return f"{self.lab.subnet_base}.254"  # the underlay bridge's own address

    @property
    def address(self) -> str:
        """What a plugin name starts with: `docker plugin install ADDRESS/pyoverlay:V`."""
        return f"{self.ip}:{PORT}"

    def start(self) -> None:
        config = prepare(self.dir, self.ip, self.store, f"lab {self.lab.prefix}")
        with open(self.dir / "registry.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab.underlay_ns,
                    "docker-registry",
                    "serve",
                    str(config),
                ],  # fmt: skip
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        ca = str(self.dir / "tls" / "ca.crt")
        url = f"https://{self.address}/v2/"

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = (self.dir / "registry.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"docker-registry exited: {tail}")
            r = self.lab.underlay("curl", "-sf", "--max-time", "5", "--cacert", ca, url)
            return r.returncode == 0

        wait_for(f"the registry at {url}", answers, timeout=30 * self.lab.slow, interval=0.1)
        for h in self.lab.hosts:
            self.trust(h)

    def trust(self, h: Host) -> None:
        """The registry's CA where `h`'s dockerd looks: certs.d/<address>/ca.crt."""
        CERTS_D.mkdir(parents=True, exist_ok=True)
        ca = (self.dir / "tls" / "ca.crt").read_text()
        h.run("mount", "-t", "tmpfs", "-o", "mode=755", "pyoverlay-lab-certs", str(CERTS_D))
        h.run("mkdir", "-p", str(CERTS_D / self.address))
        sh(*h.nsenter(), "tee", str(CERTS_D / self.address / "ca.crt"), input=ca)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None

    def publish(self, h: Host, tree: Path, ref: str) -> None:
        """A plugin directory (config.json + rootfs) pushed as `ref` through `h`'s dockerd,
        which keeps no copy."""
        h.docker("plugin", "create", ref, str(tree), timeout=900)
        h.docker("plugin", "push", ref, timeout=900)
        h.docker("plugin", "rm", "-f", ref)

    def stored_bytes(self) -> int:
        """Bytes of every blob the registry holds (for one plugin: what an install
        downloads, the compressed rootfs layer and the config)."""
        blobs = self.store / "docker" / "registry" / "v2" / "blobs"
        return sum(p.stat().st_size for p in blobs.rglob("data"))


@contextlib.contextmanager
def registry(lab: Lab) -> Iterator[LabRegistry]:
    reg = LabRegistry(lab)
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


class Release:
    """This checkout's plugin build, published once into `store` (no dockerd: lab/publish.py)
    and served to each lab by a registry of its own over that store: every integration
    host installs pyoverlay with `docker plugin install`, as a user does, while the
    rootfs is packed and uploaded once per session."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.tree: Path | None = None  # resolved once: every host of the run gets one build

    def serve(self, lab: Lab) -> str:
        """The reference to install on `lab`'s hosts; its registry runs until lab.down()."""
        reg = lab.registry
        if not isinstance(reg, LabRegistry):
            reg = LabRegistry(lab, self.store)
            lab.cleanups.append(reg.stop)
            reg.start()
            lab.registry = reg
        tree = self.tree = self.tree or plugin_tree()
        tag = "build-" + tree.name.rsplit("-", 1)[-1]  # the build's content key
        tags = self.store / "docker/registry/v2/repositories/pyoverlay/_manifests/tags"
        if not (tags / tag).exists():
            ca = reg.dir / "tls" / "ca.crt"
            lab.underlay("env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "lab.publish",
                         str(tree), f"https://{reg.address}", "pyoverlay", tag,
                         "--cacert", str(ca), timeout=900)  # fmt: skip
        return f"{reg.address}/pyoverlay:{tag}"


def plugin_tree() -> Path:
    """The plugin's directory (config.json + rootfs) for this checkout, built if needed;
    PYOVERLAY_PLUGIN_TREE names one built beforehand (the IPsec tier's VM, whose view of
    the checkout is read-only, gets it from scripts/test-ipsec-vm)."""
    if given := os.environ.get("PYOVERLAY_PLUGIN_TREE"):
        return Path(given)
    r = sh(str(ROOT / "scripts" / "build-plugin"), "--dir", timeout=1800)
    return Path(r.stdout.strip().splitlines()[-1])


def main() -> int:
    """`python -m lab.registry prepare DIR IP`: the Vagrant tier's registry on the host
    side (scripts/test-vm starts it): prints the config's path, the build's tag and its
    directory (what is published under that tag)."""
    _, verb, where, ip = sys.argv
    assert verb == "prepare", verb
    print(prepare(Path(where), ip, Path(where) / "data", "vm tier"))
    tree = plugin_tree()
    print("build-" + tree.name.rsplit("-", 1)[-1])
    print(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
