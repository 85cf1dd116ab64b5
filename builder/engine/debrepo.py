"""dlenv's package repository: a lock's Debian files, from the store, served to one build.

A flat apt repository (Debian's own `dpkg-scanpackages` writes its Packages index) holding exactly
the files the lock pins (under `pool/`), plus the source tarballs the build compiles from under `sources/` and the
lock's Python files under `python/` with a PEP 503 index under `simple/` (pip's index in the build). It is
served on 127.0.0.1 for the duration of a build and answers as an HTTP proxy for the fixed host
name `dlenv.packages`: the base image's apt sources and the templates name only that host, the build
reaches it through the predefined `http_proxy` build argument (never recorded in an image's history
or cache keys), so the image is the same whichever source the bytes came from and whichever port
served them. mmdebstrap bootstraps the base from it the same way.
"""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from builder import paths
from builder.engine.store import PackageStore
from builder.errors import BuildError
from builder.names import DEB_FILES, PACKAGE_REPO_HOST, PACKAGE_REPO_URL, PYTHON_FILES, SOURCE_TARBALLS
from builder.plan.debs import release_text, with_priorities


def write_repository(target: Path, files: list, suite: str, store: PackageStore | None = None) -> None:
    """Lay out `files` (all in the store) as a flat repository in `target`, with its index and Release."""
    store = store or PackageStore()
    for folder in (DEB_FILES, SOURCE_TARBALLS):     # also for a lock without any (an empty index)
        (target / folder).mkdir(parents=True, exist_ok=True)
    projects: dict = {}
    for file in files:
        if file.kind == "python":
            projects.setdefault(re.sub(r"[-_.]+", "-", file.name).lower(), []).append(file)
        # Each kind in its own folder: no file name of a lock can replace the index or Release.
        folder = {"source": f"{SOURCE_TARBALLS}/", "python": f"{PYTHON_FILES}/"}.get(file.kind, f"{DEB_FILES}/")
        dest = target / f"{folder}{file.basename}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            continue
        try:
            os.link(store.path(file.sha256), dest)
        except OSError:
            shutil.copyfile(store.path(file.sha256), dest)
    _write_simple_index(target, projects)
    scan = shutil.which("dpkg-scanpackages")
    if scan is None:
        raise BuildError("dpkg-scanpackages is not installed; it indexes dlenv's package repository",
                         hint="apt-get install dpkg-dev")
    proc = subprocess.run([scan, "--multiversion", DEB_FILES], cwd=target, capture_output=True)
    if proc.returncode != 0:
        raise BuildError(f"dpkg-scanpackages failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    index = with_priorities(proc.stdout.decode(), files).encode()
    (target / "Packages").write_bytes(index)
    (target / "Release").write_text(release_text(suite, {"Packages": index}))


def _write_simple_index(target: Path, projects: dict) -> None:
    """A PEP 503 index of the lock's Python files: simple/<project>/ links each file with its sha256."""
    for project, files in projects.items():
        page = target / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../{PYTHON_FILES}/{urllib.parse.quote(f.basename)}#sha256={f.sha256}">'
                        f"{html.escape(f.basename)}</a><br>\n" for f in sorted(files, key=lambda f: f.basename))
        page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")


class _Handler(SimpleHTTPRequestHandler):
    """Serves the repository folder for proxy requests to dlenv.packages (and plain requests); refuses others."""

    def translate_path(self, path):
        return super().translate_path(urllib.parse.urlsplit(path).path or "/")

    def _allowed(self) -> bool:
        parts = urllib.parse.urlsplit(self.path)
        if parts.scheme and parts.hostname != PACKAGE_REPO_HOST:
            self.send_error(403, f"dlenv's package repository serves only {PACKAGE_REPO_HOST}")
            return False
        return True

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()

    def list_directory(self, path):
        self.send_error(404, "no listing")

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 (a free port) in a thread; yields the proxy URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="dlenv-packages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def repository(files: list, suite: str, store: PackageStore | None = None):
    """Write and serve a repository of `files` for the duration of the block; yields the proxy URL.
    The folder (hard links into the store) is removed afterwards, also on an interrupt."""
    workdir = Path(tempfile.mkdtemp(prefix="packages-", dir=paths.state_dir()))
    try:
        write_repository(workdir, files, suite, store)
        with serve(workdir) as url:
            yield url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def proxy_args(url: str | None) -> dict:
    """The environment that routes apt to the repository (both spellings: tools read either)."""
    return {"http_proxy": url, "HTTP_PROXY": url} if url else {}


def build_args(url: str | None) -> dict:
    """A build's arguments with the repository served at `url`: apt through the proxy, pip from the
    repository's index of the lock's files (fixed values: the same text on every machine)."""
    if not url:
        return {}
    return {**proxy_args(url), "PIP_INDEX_URL": f"{PACKAGE_REPO_URL}simple/", "PIP_EXTRA_INDEX_URL": "",
            "PIP_TRUSTED_HOST": PACKAGE_REPO_HOST}
