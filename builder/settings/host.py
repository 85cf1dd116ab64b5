"""Host settings that builds use but images never keep: CA bundle, Debian mirror, pip index, proxies.

Nothing found here may reach the content hash, a runtime layer, a label or the image env.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ConfigError
from builder.names import PROXY_VARS

try:
    from pip._internal.models.index import PyPI as _PIP_DEFAULT
except Exception:  # noqa: BLE001 - pip's internals: without them, only the configured indexes are asked
    _PIP_DEFAULT = None

CA_ENV_VARS = ("DLENV_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
PIP_ENV_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


@dataclass(frozen=True)
class CABundle:
    path: Path | None
    source: str          # where it was found, for `doctor` and messages

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path else b""


def find_ca_bundle(explicit: str | None = None, environ=os.environ, source: str = "--ca-bundle") -> CABundle:
    """--ca-bundle (or the ca_bundle setting), then DLENV_CA_BUNDLE, PIP_CERT, SSL_CERT_FILE, REQUESTS_CA_BUNDLE."""
    candidates = [(source, explicit)] + [(var, environ.get(var)) for var in CA_ENV_VARS]
    for source, value in candidates:
        if not value:
            continue
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"CA bundle {value} (from {source}) is not a file",
                              hint="point it at a PEM bundle or unset it")
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise ConfigError(f"CA bundle {value} (from {source}) holds no PEM certificate")
        return CABundle(path, source)
    return CABundle(None, "none (the image's own Debian CA certificates are used)")


def pip_build_args(environ=os.environ) -> dict:
    """The user's pip index settings that a container can use (http/https URLs only)."""
    out = {}
    for var in PIP_ENV_VARS:
        value = environ.get(var, "").strip()
        if not value:
            continue
        if var == "PIP_TRUSTED_HOST":
            out[var] = value
            continue
        urls = [u for u in value.split() if u.startswith(("http://", "https://"))]
        if urls:
            out[var] = " ".join(urls)
    for var in PROXY_VARS:
        if environ.get(var):
            out[var] = environ[var]
    return out


def pip_index_urls(environ=os.environ) -> tuple:
    """The package indexes the host's pip uses (http(s) only: PIP_INDEX_URL and PIP_EXTRA_INDEX_URL,
    else pip's configuration, else pip's own default): where the store fetches a lock's Python files."""
    index = environ.get("PIP_INDEX_URL", "").split()
    extra = environ.get("PIP_EXTRA_INDEX_URL", "").split()
    if not index or not extra:
        config = _pip_config()
        index = index or config.get("index-url", "").split()
        extra = extra or config.get("extra-index-url", "").split()
    if not index and _PIP_DEFAULT is not None:
        index = [_PIP_DEFAULT.simple_url]     # pip's built-in index (not written here: pip knows it)
    return tuple(u for u in [*index, *extra] if u.startswith(("http://", "https://")))


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict:
    """index-url and extra-index-url from pip's configuration (pip asked once per process)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url") and value:
            values[name] = value.strip().strip("'\"")
    return values


def debian_sources(suite: str, environ=os.environ, mirror: str | None = None) -> str:
    """deb822 sources (deb and deb-src) for `suite`: the debian_mirror setting, DLENV_DEBIAN_MIRROR,
    or the host's apt config."""
    mirror = mirror or environ.get("DLENV_DEBIAN_MIRROR")
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    if mirror:
        if not re.match(r"^https?://[^\s]+$", mirror):
            raise ConfigError(f"DLENV_DEBIAN_MIRROR={mirror!r} is not an http(s) URL")
        return _deb822([(mirror, [suite, f"{suite}-updates"], ["main"])], keyring)
    entries = []
    for uri, suites, components in _host_entries():
        wanted = [s for s in suites if s == suite or s.startswith(f"{suite}-")]
        if wanted:
            entries.append((uri, wanted, components))
    if not entries:
        raise ConfigError(f"no Debian mirror for {suite!r} in the host's apt sources",
                          hint="set DLENV_DEBIAN_MIRROR to a Debian mirror URL")
    return _deb822(entries, keyring)


def mirror_uris(suite: str, environ=os.environ, mirror: str | None = None) -> tuple:
    """The archive roots a lock's pool files are fetched from: the mirror setting, else every host
    apt source that serves `suite` (the main archive and the security archive are separate roots)."""
    mirror = mirror or environ.get("DLENV_DEBIAN_MIRROR")
    if mirror:
        return (mirror,)
    out = []
    for uri, suites, _components in _host_entries():
        if any(s == suite or s.startswith(f"{suite}-") for s in suites) and uri not in out:
            out.append(uri)
    return tuple(out)


def _deb822(entries, keyring: str) -> str:
    blocks = []
    for uri, suites, components in entries:
        blocks.append("\n".join([
            "Types: deb deb-src", f"URIs: {uri}", f"Suites: {' '.join(suites)}",
            f"Components: {' '.join(components)}", f"Signed-By: {keyring}"]))
    return "\n\n".join(blocks) + "\n"


def _host_entries():
    files = []
    for location in APT_SOURCES:
        if location.is_dir():
            files.extend(sorted(location.glob("*.sources")) + sorted(location.glob("*.list")))
        elif location.is_file():
            files.append(location)
    for f in files:
        try:
            text = f.read_text("utf-8", errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = {}
                for line in block.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and fields.get("uris") and fields.get("enabled", ["yes"]) != ["no"]:
                    for uri in fields["uris"]:
                        if uri.startswith(("http://", "https://")):
                            yield uri, fields.get("suites", []), fields.get("components", ["main"])
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[1].startswith(("http://", "https://")):
                    yield parts[1], [parts[2]], parts[3:] or ["main"]
