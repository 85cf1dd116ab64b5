"""What the buildah engine keeps in dlenv's buildah storage, and how its images reach Docker.

- The deterministic base (report of issue #17, §1): the mmdebstrap rootfs tarball becomes the only,
  uncompressed layer of a docker-archive whose config is fixed (created = the recipe's epoch), pulled
  into dlenv's buildah storage under the name the Dockerfile's FROM uses. Its image id is the config's
  digest: the same on every machine whose bootstrap gives the same rootfs. Only for buildah: the
  sdk/BuildKit base stays a `docker import` (their content hashes and goldens do not change). The
  buildah base's bootstrap also deletes /etc/hostname and /etc/resolv.conf (mmdebstrap copies the
  host's; engines bind-mount both at run time) and the Debian sources (the mirror's URL), so its
  rootfs differs from the lock's rootfs_sha256 and is the same on every machine.
- Into Docker: `buildah push IMG docker-daemon:TAG`, or, when DOCKER_HOST names another engine
  (docker-daemon: ignores it), a docker-archive loaded through docker-py. Same id on both sides.
- The layer listing of an image, to say which paths differ between two builds (`build --check`).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from builder import paths
from builder.engine import dockerapi as engine
from builder.engine.base import bootstrap_rootfs
from builder.engine.buildah import run_buildah, storage_root
from builder.errors import EngineError
from builder.names import (APT_SOURCES_DIR, APT_SOURCES_LIST, BUILDAH_BASE_FORMAT_LABEL, BUILDAH_LOCAL, PACKAGES_LABEL,
                           RECIPE_LABEL, ROOTFS_LABEL)
from builder.plan.pins import base_recipe, packages_digest

# What the buildah base's bootstrap removes: the host's /etc/hostname and /etc/resolv.conf (engines
# bind-mount both at run time) and the Debian sources mmdebstrap wrote (the mirror: RUN steps get it as
# a bind mount, builder.plan.buildah_variant). A change here is a new BASE_FORMAT.
HOST_FILES_HOOK = (f'--customize-hook=rm -f "$1/etc/hostname" "$1/etc/resolv.conf" "$1{APT_SOURCES_LIST}" '
                   f'"$1"{APT_SOURCES_DIR}/*')
BASE_FORMAT = "3"   # 3: bootstrapped from dlenv's repository, with the archive's priorities
_DEFAULT_SOCKETS = ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")
# PAX records a layer listing leaves out: the ones tarfile reads into its fields, and the times
_PAX_KNOWN = frozenset({"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"})


def image_id(cli: str, ref: str) -> str | None:
    """The id of `ref` in dlenv's buildah storage, or None."""
    proc = run_buildah(cli, "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref, check=False)
    got = proc.stdout.strip()
    return ("sha256:" + got.removeprefix("sha256:")) if proc.returncode == 0 and got else None


def base_format(cli: str, ref: str) -> str:
    """The BASE_FORMAT label of the base `ref` in dlenv's buildah storage ('' when it has none)."""
    proc = run_buildah(cli, "inspect", "--type", "image", "--format",
                       f'{{{{index .OCIv1.Config.Labels "{BUILDAH_BASE_FORMAT_LABEL}"}}}}', ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def base_config(base: dict, layer_sha: str, installed: dict, arch: str) -> bytes:
    """The base's image config: byte for byte a function of the recipe, the rootfs and its packages."""
    recipe = base_recipe(base)
    created = datetime.datetime.fromtimestamp(recipe["epoch"], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = f"{recipe['suite']}/{recipe['variant']}/{recipe['epoch']}"
    cfg = {
        "architecture": arch, "os": "linux", "created": created,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                   "Cmd": ["bash"],
                   "Labels": {RECIPE_LABEL: name, ROOTFS_LABEL: layer_sha, PACKAGES_LABEL: packages_digest(installed),
                              BUILDAH_BASE_FORMAT_LABEL: BASE_FORMAT}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_sha}"]},
        "history": [{"created": created, "created_by": f"dlenv bootstrap {name} (mmdebstrap)"}],
    }
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid = 0, 0o644, 0, 0
    if path is not None:
        info.size = path.stat().st_size
        with open(path, "rb") as handle:
            tar.addfile(info, handle)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_base_archive(out: Path, ref: str, rootfs: Path, config: bytes, layer_sha: str) -> str:
    """A docker-archive (docker save format) holding `rootfs` as its one layer; returns the image id."""
    cfg_hex = hashlib.sha256(config).hexdigest()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{cfg_hex}.json", config)
        _add(tar, f"{layer_sha}/layer.tar", path=rootfs)
        manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": [ref], "Layers": [f"{layer_sha}/layer.tar"]}]
        _add(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    return f"sha256:{cfg_hex}"


def ensure_base(cli: str, base: dict, ref: str, arch: str, log=lambda msg: None, pins: dict | None = None,
                mirror: str | None = None, repo: str | None = None) -> str:
    """The base in dlenv's buildah storage as `ref`, the name the Dockerfile's FROM uses (bootstrapped
    and pulled when missing)."""
    if "image" in base:
        raise EngineError("the buildah engine builds only on dlenv's bootstrapped Debian base for now",
                          hint="build this stack with --engine sdk or buildkit")
    if image_id(cli, ref) is not None:
        if base_format(cli, ref) == BASE_FORMAT:
            return ref
        log(f"the buildah base {ref} was made by an earlier dlenv; bootstrapping it again")
        run_buildah(cli, "rmi", "--force", ref)
    workdir = Path(tempfile.mkdtemp(prefix="buildah-base-", dir=paths.state_dir()))
    try:
        rootfs, sha, installed = bootstrap_rootfs(base, workdir, log, pins=pins, mirror=mirror, repo=repo,
                                                  hooks_after=(HOST_FILES_HOOK,))
        archive = workdir / "base.tar"
        want = write_base_archive(archive, ref, rootfs, base_config(base, sha, installed, arch), sha)
        log(f"loading the base (rootfs sha256 {sha[:16]}, image {want[7:19]}) into dlenv's buildah storage as {ref}")
        run_buildah(cli, "pull", "--quiet", f"docker-archive:{archive}")
        got = image_id(cli, ref)
        if got != want:
            raise EngineError(f"buildah stored the base {ref} as {got}, not {want}",
                              hint=f"remove dlenv's buildah storage ({paths.state_dir() / 'buildah'}) and build again")
        return ref
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def from_docker(cli: str, client, ref: str, want_id: str, environ=os.environ) -> None:
    """Copy the Docker image `ref` into dlenv's buildah storage under the one name `localhost/<ref>`
    (buildah writes an image's first name into the history of what is built on it, so the name must
    not depend on where the image came from), replacing another image held under that name, and
    check buildah gives it Docker's id."""
    if image_id(cli, ref) is not None:
        run_buildah(cli, "rmi", ref)
    if environ.get("DOCKER_HOST", "") in _DEFAULT_SOCKETS:
        run_buildah(cli, "pull", "--quiet", f"docker-daemon:{ref}", timeout=3600)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="buildah-pull-", dir=paths.state_dir()))
        try:
            archive = workdir / "image.tar"
            with open(archive, "wb") as handle:
                for chunk in client.images.get(ref).save(named=ref):
                    handle.write(chunk)
            run_buildah(cli, "pull", "--quiet", f"docker-archive:{archive}", timeout=3600)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    only_local_name(cli, ref, want_id)
    got = image_id(cli, ref)
    if got != want_id:
        raise EngineError(f"dlenv's buildah storage holds {ref} as {got}, not Docker's {want_id}",
                          hint=f"remove dlenv's buildah storage ({paths.state_dir() / 'buildah'}) and build again")


def only_local_name(cli: str, ref: str, want_id: str) -> None:
    """The image `want_id` named `localhost/<ref>` only (a pull may name it `docker.io/<ref>`; a killed
    `--check` may leave its name on it). buildah writes into the history of the step after a FROM the
    first of the FROM image's names that holds the image's repository name, so another one held first
    would give whatever is built on it another id."""
    names = [n for image in json.loads(run_buildah(cli, "images", "--json").stdout or "[]")
             if want_id.removeprefix("sha256:").startswith(image.get("id", "-")) for n in image.get("names") or []]
    local = BUILDAH_LOCAL + ref
    if local not in names:
        run_buildah(cli, "tag", want_id.removeprefix("sha256:"), local)
    for name in names:
        if name != local:
            run_buildah(cli, "rmi", name)                      # one of several names: only untags


def _host_store(cli: str) -> dict:
    """`buildah info`'s store section: the host's own containers-storage (podman's, a plain `buildah`'s)."""
    proc = subprocess.run([cli, "info"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        store = json.loads(proc.stdout)["store"]
        return {k: store[k] for k in ("GraphDriverName", "GraphRoot", "RunRoot")}
    except (ValueError, KeyError, TypeError):
        raise EngineError("`buildah info` did not name the host's containers-storage",
                          hint="run `buildah info`; see `dlenv doctor`") from None


def default_store(cli: str) -> str:
    """The host's own containers-storage as a transport prefix: `containers-storage:[driver@graphroot+runroot]`."""
    store = _host_store(cli)
    return f"containers-storage:[{store['GraphDriverName']}@{store['GraphRoot']}+{store['RunRoot']}]"


def host_graph_root(cli: str) -> str:
    """Where the host's containers-storage keeps its layers (its GraphRoot)."""
    return _host_store(cli)["GraphRoot"]


def storage_records(root: Path | None = None) -> tuple[list, list]:
    """(layers, images) as containers-storage records them in dlenv's buildah storage (its
    `<driver>-layers/layers.json`, `<driver>-images/images.json`): each layer's id, parent and
    diff-size, each image's names and top layer. Read, never written; empty when there are none."""
    root = Path(root or storage_root())
    out = []
    for pattern in ("*-layers/layers.json", "*-images/images.json"):
        found = []
        for path in sorted(root.glob(pattern)):
            try:
                found += [e for e in json.loads(path.read_text()) if isinstance(e, dict)]
            except (OSError, ValueError):
                continue
        out.append(found)
    return out[0], out[1]


def to_containers_storage(cli: str, ref: str, want_id: str) -> str:
    """Copy `ref` into the host's containers-storage (where podman finds it) under the same name and
    id; returns the store's transport prefix."""
    store = default_store(cli)
    local = BUILDAH_LOCAL + ref        # as buildah names its own images (a bare name would become docker.io/)
    run_buildah(cli, "push", "--quiet", ref, f"{store}{local}", timeout=3600)
    proc = subprocess.run([cli, "inspect", "--type", "image", "--format", "{{.FromImageID}}", local],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    got = "sha256:" + proc.stdout.strip().removeprefix("sha256:")
    if proc.returncode != 0 or got != want_id:
        raise EngineError(f"the host's containers-storage holds {ref} as {got}, not {want_id}",
                          hint="run `buildah images`; see `dlenv doctor`")
    return store


def to_docker(cli: str, client, ref: str, tag_ref: str, want_id: str, environ=os.environ) -> None:
    """Hand the image `ref` to the Docker engine as `tag_ref`, and check Docker gives it the same id."""
    if environ.get("DOCKER_HOST", "") in _DEFAULT_SOCKETS:
        run_buildah(cli, "push", "--quiet", ref, f"docker-daemon:{tag_ref}")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="buildah-push-", dir=paths.state_dir()))
        try:
            archive = workdir / "image.tar"
            run_buildah(cli, "push", "--quiet", ref, f"docker-archive:{archive}:{tag_ref}")
            with open(archive, "rb") as handle:
                client.images.load(handle)
            engine.untag(client, f"localhost/{ref}")   # the archive also names buildah's own ref (report §3)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    attrs = engine.image_attrs(client, tag_ref)
    if attrs is None or attrs["Id"] != want_id:
        raise EngineError(f"Docker holds {tag_ref} as {(attrs or {}).get('Id', 'nothing')}, not buildah's {want_id}",
                          hint="run `dlenv doctor`; check that DOCKER_HOST names the engine on this machine")


def layer_listing(cli: str, ref: str) -> set[tuple]:
    """Every entry of every layer of `ref`: (layer index, path, type, mode, uid, gid, size, sha256, user
    and group names, the PAX records but times: extended attributes). Times are the build's timestamp."""
    workdir = Path(tempfile.mkdtemp(prefix="buildah-list-", dir=paths.state_dir()))
    try:
        run_buildah(cli, "push", "--quiet", ref, f"oci:{workdir / 'oci'}")
        index = json.loads((workdir / "oci" / "index.json").read_text())
        blobs = workdir / "oci" / "blobs" / "sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
        out = set()
        for i, layer in enumerate(manifest["layers"]):
            with tarfile.open(blobs / layer["digest"].split(":")[1], "r:*") as tar:
                for m in tar:
                    data = tar.extractfile(m).read() if m.isfile() else m.linkname.encode()
                    pax = tuple(sorted((k, v) for k, v in m.pax_headers.items() if k not in _PAX_KNOWN))
                    out.add((i, m.name, m.type, m.mode, m.uid, m.gid, m.size, hashlib.sha256(data).hexdigest(),
                             m.uname, m.gname, pax))
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def image_names(cli: str) -> list[str]:
    """Every image name in dlenv's buildah storage."""
    proc = run_buildah(cli, "images", "--json")
    return [name for image in json.loads(proc.stdout or "[]") for name in image.get("names") or []]


def remove_images(cli: str, names: list[str], prune: bool) -> list[str]:
    """Remove `names` (and, `prune`, every image no named one needs: the layer cache); what could not
    be removed, with buildah's reason."""
    failed = []
    for name in names:
        proc = run_buildah(cli, "rmi", name, check=False)
        if proc.returncode != 0:
            failed.append(f"{name}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    if prune:
        run_buildah(cli, "rmi", "--prune", check=False)
    return failed


def layer_steps(cli: str, ref: str) -> list[dict]:
    """The layers of `ref` in dlenv's buildah storage, in order: {"diff_id", "step"} (the history entry
    that made each; steps that made no layer are left out)."""
    proc = run_buildah(cli, "inspect", "--type", "image", ref)     # 1.28's --format has no json function
    config = json.loads(proc.stdout).get("OCIv1", {})
    steps = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(steps) != len(diff_ids):
        steps = [""] * len(diff_ids)
    return [{"diff_id": d, "step": s[:160]} for d, s in zip(diff_ids, steps)]


def differing_paths(a: set[tuple], b: set[tuple], limit: int = 10) -> list[str]:
    """The paths whose entries differ between two layer listings (pure)."""
    return sorted({entry[1] for entry in a ^ b})[:limit]


def image_config(cli: str, ref: str) -> dict:
    """The OCI config of `ref` in dlenv's buildah storage, as buildah reads it ({} when it has none)."""
    proc = run_buildah(cli, "inspect", "--type", "image", ref)
    return json.loads(proc.stdout or "{}").get("OCIv1") or {}


def config_differences(was: dict, now: dict, limit: int = 4) -> list[str]:
    """What differs between two OCI image configs, for `build --check` when no path does (pure): the layers
    whose digests differ (their files' metadata), the first history entry that differs (buildah's history
    comment of each later step names the image before it, so those follow), the config's fields, the rest."""
    out = []
    layers = _indexes_differing((was.get("rootfs") or {}).get("diff_ids") or [],
                                (now.get("rootfs") or {}).get("diff_ids") or [])
    if layers:
        out.append(f"the digest of layer {', '.join(map(str, layers[:5]))}")
    histories = (was.get("history") or [], now.get("history") or [])
    history = _indexes_differing(*histories)
    if history:
        i = history[0]
        old, new = ((h[i] if i < len(h) else {}) for h in histories)
        for field in sorted(set(old) | set(new), key=lambda f: (f != "created_by", f)):
            if old.get(field) != new.get(field):
                out.append(f"history entry {i} {field}: {_changed(old.get(field), new.get(field))}")
                break
        if len(history) > 1:
            out.append(f"{len(history) - 1} later history entries")
    config_was, config_now = was.get("config") or {}, now.get("config") or {}
    for field in sorted(set(config_was) | set(config_now)):
        old, new = config_was.get(field), config_now.get(field)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):          # Labels: the ones that differ
            out += [f"config {field} {key}: {_changed(old.get(key), new.get(key))}"
                    for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        else:
            out.append(f"config {field}: {_changed(old, new)}")
    for field in sorted((set(was) | set(now)) - {"rootfs", "history", "config"}):
        if was.get(field) != now.get(field):
            out.append(f"{field}: {_changed(was.get(field), now.get(field))}")
    return out[:limit]


def _indexes_differing(a: list, b: list) -> list[int]:
    return [i for i in range(max(len(a), len(b))) if a[i:i + 1] != b[i:i + 1]]


def _changed(was, now, width: int = 90) -> str:
    """`was` -> `now` as short texts: whole, or from a little before the first character that differs."""
    a, b = (json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in (was, now))
    start = 0
    if max(len(a), len(b)) > width:
        start = max(0, next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) - 30)
    cut = [("..." if start else "") + t[start:start + width] + ("..." if len(t) > start + width else "") for t in (a, b)]
    return f"{cut[0]!r} -> {cut[1]!r}"
