"""A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

Docker treats 127.0.0.0/8 as an insecure registry by default (`docker info` lists it under
"Insecure Registries"), so the engine talks plain HTTP to it without any daemon configuration.

- `ensure_tools()` installs docker-registry and apache2-utils (htpasswd -B) when missing, or fails
  the session with what to install.
- `Registry` writes its own config (filesystem storage in a temp folder, optional htpasswd basic
  auth), starts `docker-registry serve` on a free port and stops or SIGKILLs it.
- `ThrottledProxy` is a TCP forwarder that limits how fast the registry's answers reach the engine,
  so a test can kill the registry while a pull is surely still downloading.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PACKAGES = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils"}


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = ""
    if shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            log += proc.stdout[-1500:] + proc.stderr[-1500:]
    still = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if still:
        pytest.fail(f"registry tests need the Debian packages {', '.join(still)} and could not install them "
                    f"(run scripts/setup-host.sh as root, or apt-get install {' '.join(still)}):\n{log}",
                    pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_htpasswd(path: Path, user: str, password: str) -> None:
    # -i reads the password from stdin: it never appears in a process listing.
    subprocess.run(["htpasswd", "-B", "-i", "-c", str(path), user], input=password, text=True, check=True,
                   capture_output=True)


class Registry:
    def __init__(self, root: Path, *, htpasswd: Path | None = None, realm: str = "dlenv-test"):
        self.root = Path(root)
        self.htpasswd = htpasswd
        self.realm = realm
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "registry.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> str:
        text = (f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'storage'}\n"
                f"  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.address}\n")
        if self.htpasswd:
            text += f"auth:\n  htpasswd:\n    realm: {self.realm}\n    path: {self.htpasswd}\n"
        return text

    def start(self, timeout: float = 20) -> "Registry":
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.yml"
        cfg.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2)
                return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # basic auth: up and asking for credentials
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        pytest.fail(f"docker-registry did not come up on {self.address}:\n{tail}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def has_manifest(self, repo: str, tag: str, auth: tuple[str, str] | None = None) -> bool:
        req = urllib.request.Request(f"http://{self.address}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        if auth:
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise


class ThrottledProxy:
    """127.0.0.1:PORT -> upstream, answers limited to `rate` bytes/s per connection (None: no limit).
    When the upstream dies mid-answer the client's connection is closed, as it would be by the
    registry itself; `close()` stops listening, so retries get "connection refused"."""

    CHUNK = 32 * 1024

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rate: float | None = None
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                dst.sendall(data)
                if throttled and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
