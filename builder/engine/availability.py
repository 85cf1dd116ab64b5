"""Which Debian pins of a lock no source has any more, found without downloading a byte.

A lock names the bytes of every Debian pin (plan/debs.py); a build takes each file from the first
source that has it (engine/store.py: the store, vendored bundles, a snapshot service, the mirrors).
This module asks the same sources, cheaply: the store and the bundles' manifests on disk, then an
HTTP HEAD per file the store lacks, in parallel, with a short timeout and a few workers. Files are
asked for once even when several locks name them (by sha256). A source host that does not answer is
asked no more: what only it could have said is reported as not checked, with the reason, never as
gone. Nothing is cached on disk; only kinds "deb" and "source" are looked at.
"""

from __future__ import annotations

import http.client
import queue
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from builder.engine.store import PackageSources, PackageStore, bundle_index
from builder.plan.pins import base_recipe
from builder.settings.host import mirror_uris

KINDS = ("deb", "source")
TIMEOUT = 4.0          # seconds per request
WORKERS = 8
DEADLINE = 30.0        # seconds for the whole pass; what is still unanswered then is "not checked"

FOUND, ABSENT, UNKNOWN = "found", "absent", "unknown"
USER_AGENT = "dlenv (pin check)"


@dataclass(frozen=True)
class LockPins:
    """One lock's files as the check takes them: `files` from `lock_files`/`needed_files`, `unknown` the
    PACKAGE=VERSION pins it names without bytes, where the files may come from, and its resolution time
    (the snapshot services' timestamp)."""
    files: tuple
    unknown: tuple = ()
    sources: PackageSources = PackageSources()
    resolved_at: str = ""


@dataclass
class PinCheck:
    """What one lock's Debian pins look like from here."""
    files: int = 0                                      # deb and source files with bytes recorded
    debs: int = 0                                       # of which binary packages
    local: int = 0                                      # in the store or a bundle
    gone: list = field(default_factory=list)            # DebFile no source has (every source answered)
    unchecked: list = field(default_factory=list)       # DebFile not here that no source could be asked for
    reasons: list = field(default_factory=list)         # why not, once each
    no_bytes: list = field(default_factory=list)        # PACKAGE=VERSION pins the lock names without bytes
    offline: bool = False

    @property
    def gone_keys(self) -> list:
        """PACKAGE=VERSION of each vanished pin; a source tarball by its file name."""
        return sorted({f.key if f.kind == "deb" else f"{f.basename} (source of {f.key})" for f in self.gone})

    @property
    def ok(self) -> bool:
        return not (self.gone or self.unchecked or self.no_bytes)


def debian_sources(base: dict, *, mirror: str | None = None, snapshots=(), bundles=()) -> PackageSources:
    """Where a build takes the Debian files of a stack on `base` from: bundles, snapshot services, mirrors
    (pipeline/packages.py's `package_sources` adds the Python indexes and the CA bundle)."""
    suite = base_recipe(base)["suite"]
    return PackageSources(bundles=tuple(bundles), snapshots=tuple(snapshots), mirrors=mirror_uris(suite, mirror=mirror))


def check_pins(files, sources: PackageSources, *, unknown=(), resolved_at: str = "", store: PackageStore | None = None,
               offline: bool = False, timeout: float = TIMEOUT, workers: int = WORKERS,
               deadline: float = DEADLINE) -> PinCheck:
    """The pins of one lock: which are gone, which could not be checked, which have no bytes recorded."""
    job = LockPins(tuple(files), tuple(unknown), sources, resolved_at)
    return check_locks({"": job}, store=store, offline=offline, timeout=timeout, workers=workers,
                       deadline=deadline)[""]


def check_locks(jobs: dict, *, store: PackageStore | None = None, offline: bool = False, timeout: float = TIMEOUT,
                workers: int = WORKERS, deadline: float = DEADLINE) -> dict:
    """{name: PinCheck} of several locks ({name: LockPins}) in one parallel pass: a file several of them
    name is asked for once, at every source any of them would take it from."""
    store = store or PackageStore()
    bundles: dict = {}
    results = {name: PinCheck(no_bytes=sorted(job.unknown), offline=offline) for name, job in jobs.items()}
    wanted: dict = {}          # sha256 -> (DebFile, [url, ...]) of the files no lock has here
    waiting: dict = {}         # name -> [DebFile, ...] of its files that were asked for
    for name, job in jobs.items():
        check = results[name]
        local = set()
        for bundle in job.sources.bundles:
            if bundle not in bundles:
                bundles[bundle] = {sha for sha, path in bundle_index(Path(bundle)).items() if Path(path).is_file()}
            local |= bundles[bundle]
        for file in job.files:
            if file.kind not in KINDS:
                continue
            check.files += 1
            check.debs += file.kind == "deb"
            if file.sha256 in local or store.has(file):
                check.local += 1
                continue
            entry = wanted.setdefault(file.sha256, (file, []))
            for url in _urls(file, job.sources, job.resolved_at):
                if url not in entry[1]:
                    entry[1].append(url)
            waiting.setdefault(name, []).append(file)
    if offline:
        answers = {sha: (UNKNOWN, "not in the store (offline: no source asked)") for sha in wanted}
    else:
        answers = _ask(wanted, timeout=timeout, workers=workers, deadline=deadline)
    for name, files in waiting.items():
        check = results[name]
        for file in files:
            state, reason = answers.get(file.sha256, (UNKNOWN, f"no answer within {deadline:g}s"))
            if state == ABSENT:
                check.gone.append(file)
            elif state == UNKNOWN:
                check.unchecked.append(file)
                if reason not in check.reasons:
                    check.reasons.append(reason)
    return results


def _urls(file, sources: PackageSources, resolved_at: str):
    """The network locations a build would fetch `file` from, in its order (store.py's `_candidates`)."""
    if resolved_at:
        for template in sources.snapshots:
            yield template.replace("{timestamp}", resolved_at).rstrip("/") + "/" + file.filename
    for mirror in sources.mirrors:
        yield mirror.rstrip("/") + "/" + file.filename


# --- asking ---------------------------------------------------------------------------------------

def _ask(wanted: dict, *, timeout: float, workers: int, deadline: float) -> dict:
    """{sha256: (state, reason)}: each file's locations tried in order until one has it. Daemon threads,
    each keeping its connections open from one file to the next; a host that hangs past the deadline
    keeps neither the answer nor the process waiting."""
    hosts = _Hosts(timeout)
    todo: queue.Queue = queue.Queue()
    for sha in wanted:
        todo.put(sha)
    answers: dict = {}
    lock = threading.Lock()
    finished = threading.Event()

    def one(sha: str, conns: dict) -> tuple:
        file, urls = wanted[sha]
        if not urls:
            return UNKNOWN, "no Debian mirror or snapshot service to ask (the debian_mirror setting)"
        reason = ""
        for url in urls:
            state, why = hosts.ask(url, file.size, conns)
            if state == FOUND:
                return FOUND, ""
            if state == UNKNOWN:
                reason = reason or why
        return (UNKNOWN, reason) if reason else (ABSENT, "")

    def work():
        conns: dict = {}
        try:
            while True:
                try:
                    sha = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = one(sha, conns)
                except Exception as exc:  # noqa: BLE001 - one odd answer must not leave the pass waiting
                    answer = UNKNOWN, _short(exc, timeout)
                with lock:
                    answers[sha] = answer
                    if len(answers) == len(wanted):
                        finished.set()
        finally:
            for conn in conns.values():
                conn.close()

    if not wanted:
        return {}
    for _ in range(min(workers, len(wanted))):
        threading.Thread(target=work, daemon=True, name="dlenv-availability").start()
    finished.wait(deadline)
    with lock:
        return dict(answers)


class _Hosts:
    """HEAD requests, one at a time to a host until it answered once: a host that is down costs one
    timeout, not one per file, and its later files are not checked."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.lock = threading.Lock()
        self.first: dict = {}      # netloc -> Event set once its first request ended
        self.down: dict = {}       # netloc -> why

    def ask(self, url: str, size: int, conns: dict) -> tuple:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = Path(urllib.parse.unquote(parts.path))
            return (FOUND, "") if path.is_file() and (not size or path.stat().st_size == size) else (ABSENT, "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return UNKNOWN, f"{url.split('/pool/')[0]} is not an http(s) URL"
        host = parts.netloc
        with self.lock:
            gate = self.first.get(host)
            opener = gate is None
            if opener:
                gate = self.first[host] = threading.Event()
        if not opener:
            gate.wait()
        try:
            with self.lock:
                if host in self.down:
                    return UNKNOWN, self.down[host]
            try:
                return _head(url, size, self.timeout, conns)
            except _NoAnswer as exc:
                with self.lock:
                    self.down.setdefault(host, f"{host}: {exc}")
                    return UNKNOWN, self.down[host]
        finally:
            if opener:
                gate.set()


class _NoAnswer(Exception):
    """The host could not be asked (name, connection, timeout): nothing is known of the file."""


_REDIRECTS = (301, 302, 303, 307, 308)


def _head(url: str, size: int, timeout: float, conns: dict) -> tuple:
    """(state, reason) of one location. A direct connection is kept open for the thread's next request
    (a mirror answers hundreds of them); through a proxy, and after a redirect, urllib asks."""
    parts = urllib.parse.urlsplit(url)
    if _proxied(parts):
        return _head_urllib(url, size, timeout)
    key = (parts.scheme, parts.netloc)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    for attempt in range(2):
        conn = conns.get(key)
        reused = conn is not None
        if conn is None:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conns[key] = cls(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("HEAD", target, headers={"User-Agent": USER_AGENT})
            resp = conn.getresponse()
            resp.read()
            break
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            del conns[key]
            if attempt or not reused:       # a kept connection the server closed is opened again, once
                raise _NoAnswer(_short(exc, timeout)) from None
    if resp.status in _REDIRECTS and resp.getheader("Location"):
        return _head_urllib(urllib.parse.urljoin(url, resp.getheader("Location")), size, timeout)
    if resp.status in (405, 501):           # a server that does not do HEAD
        return _head_urllib(url, size, timeout, method="GET")
    return _state(resp.status, resp.getheader("Content-Length") or "", size, parts.netloc)


def _head_urllib(url: str, size: int, timeout: float, method: str = "HEAD") -> tuple:
    headers = {"User-Agent": USER_AGENT}
    if method == "GET":
        headers["Range"] = "bytes=0-0"      # the status is what counts: no body is read
    request = urllib.request.Request(url, method=method, headers=headers)
    host = urllib.parse.urlsplit(url).netloc
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked above
            length = resp.headers.get("Content-Length", "") if method == "HEAD" else ""
            return _state(resp.status, length, size, host)
    except urllib.error.HTTPError as exc:
        if exc.code in (405, 501) and method == "HEAD":
            return _head_urllib(url, size, timeout, method="GET")
        return _state(exc.code, "", size, host)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _NoAnswer(_short(exc, timeout)) from None


def _state(status: int, length: str, size: int, host: str) -> tuple:
    """What an HTTP status says of a file: there, not there (any other client error), or nothing known."""
    if 200 <= status < 300:
        if size and length.isdigit() and int(length) != size:
            return ABSENT, ""               # another file under that name: not the locked bytes
        return FOUND, ""
    if status in (401, 407, 408, 429) or status >= 500 or status < 200 or status in _REDIRECTS:
        return UNKNOWN, f"{host}: HTTP {status}"
    return ABSENT, ""


def _proxied(parts) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parts.scheme)) and not urllib.request.proxy_bypass(parts.hostname or "")


def _short(exc, timeout: float = TIMEOUT) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, socket.gaierror):
        return "name not resolved"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    text = " ".join(str(reason).split()) or reason.__class__.__name__
    return text[:120]
