"""Charliecloud images of promoted images: `dlenv export charliecloud` converts with Charliecloud's
own `ch-convert` (docker -> dir, then dir -> squash), writes beside ch-convert's `ch/environment` the
record of what the image was made from (CHARLIECLOUD_RECORD), and moves the result into place only
when it is complete: a failed or interrupted export leaves neither a partial image nor its temporary
files. `read_record` reads that record back from a directory or a SquashFS file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from builder import __version__
from builder.engine.disk import check_needs
from builder.engine.images import require_promoted
from builder.errors import ExportError
from builder.names import CHARLIECLOUD_RECORD, HASH_LABEL, LOCK_LABEL, STACK_LABEL
from builder.plan import disk as plan_disk
from builder.plan.plan import Plan

FORMATS = ("dir", "squashfs")
SQUASH_SUFFIXES = (".sqfs", ".squashfs", ".squash")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class CharliecloudExport:
    path: str
    fmt: str
    image: str
    image_id: str
    bytes: int
    seconds: float


def _tool(name: str, package: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", _PATH) + ":" + _PATH)
    if not found:
        raise ExportError(f"{name} is not installed", hint=f"install Debian's {package}")
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def record_for(p: Plan, attrs: dict) -> dict:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return {"stack": labels.get(STACK_LABEL, p.resolved.name), "content_hash": labels.get(HASH_LABEL, p.content_hash),
            "lock": labels.get(LOCK_LABEL, ""), "image": p.hash_tag, "image_id": attrs.get("Id", ""),
            "dlenv": __version__}


def export_charliecloud(client, p: Plan, output: str, fmt: str = "dir", *, force: bool = False,
                        log_path: Path | None = None, disk_check: bool = True) -> CharliecloudExport:
    """Convert the promoted image of `p` into a Charliecloud image at `output` (a directory, or a
    SquashFS file with fmt='squashfs'); refused first (DiskError) when the folder of `output` has too
    little free space for the conversion, unless not `disk_check`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    target = Path(output)
    if fmt == "squashfs" and target.suffix not in SQUASH_SUFFIXES:
        raise ExportError(f"{output}: a SquashFS image's name ends in {' or '.join(SQUASH_SUFFIXES)}",
                          hint=f"e.g. -o {target.with_name(target.name + '.sqfs')}")
    if fmt == "dir" and target.suffix in SQUASH_SUFFIXES:
        raise ExportError(f"{output} names a SquashFS file", hint="pass --format squashfs, or a folder name")
    if target.exists() or target.is_symlink():
        if not force:
            raise ExportError(f"{target} exists", hint="pass --force to replace it, or choose another -o")
        if fmt == "dir" and target.is_dir() and not (target / CHARLIECLOUD_RECORD).is_file():
            raise ExportError(f"{target} is a folder that is not a dlenv Charliecloud image: not replaced",
                              hint="choose another -o")
    ch_convert = _tool("ch-convert", "charliecloud-builders")
    if fmt == "squashfs":
        _tool("mksquashfs", "squashfs-tools")
    attrs = require_promoted(client, p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if disk_check:
        needs = plan_disk.runtime_needs("charliecloud", int(attrs.get("Size") or 0), image_path=str(target.parent))
        check_needs(p.resolved.name, client, needs, doing=f"the {fmt} export",
                    override="or export with --skip-disk-check")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.dlenv-", dir=target.parent))
    start = time.monotonic()
    try:
        work.chmod(0o755)
        tree = work / "image"
        env = {"PATH": os.environ.get("PATH", _PATH), "USER": os.environ.get("USER") or "root",
               "HOME": os.environ.get("HOME", "/"), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        before = {c.id for c in client.containers.list(all=True, filters={"ancestor": attrs.get("Id", "")})}
        try:
            _convert([ch_convert, "--no-clobber", "-i", "docker", "-o", "dir", p.hash_tag, str(tree)], env, log_path)
        except BaseException:
            _remove_export_containers(client, attrs.get("Id", ""), before)
            raise
        record = tree / CHARLIECLOUD_RECORD
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps(record_for(p, attrs), indent=2, sort_keys=True) + "\n")
        record.chmod(0o644)
        result = tree
        if fmt == "squashfs":
            result = work / "image.sqfs"
            _convert([ch_convert, "-i", "dir", "-o", "squash", str(tree), str(result)], env, log_path)
            shutil.rmtree(tree)
        _move_into_place(result, target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CharliecloudExport(str(target), fmt, p.hash_tag, attrs.get("Id", ""), _size(target),
                              time.monotonic() - start)


def _convert(argv: list, env: dict, log_path: Path | None) -> None:
    """Run ch-convert in its own process group: on Ctrl-C or SIGTERM the whole group (docker export, pigz,
    tar) is stopped, not only the script."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            _out, err = proc.communicate()
        except BaseException:
            _stop_group(proc)
            raise
    finally:
        if log_path:
            log.close()
    if proc.returncode != 0:
        lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        raise ExportError(f"ch-convert failed (exit status {proc.returncode}): {(lines or ['no output'])[-1][:300]}",
                          hint=f"the whole output is in {log_path}" if log_path else None)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _remove_export_containers(client, image_id: str, before: set) -> None:
    """The container ch-convert creates to `docker export` the image (`docker create IMAGE /bin/true`), when
    an interruption kept ch-convert from removing it."""
    try:
        for container in client.containers.list(all=True, filters={"ancestor": image_id}):
            if container.id not in before and (container.attrs.get("Config") or {}).get("Cmd") == ["/bin/true"]:
                container.remove(force=True)
    except docker.errors.APIError:
        pass


def _move_into_place(result: Path, target: Path, work: Path) -> None:
    """Rename `result` to `target`; an existing target is renamed aside first and removed after."""
    old = None
    if target.exists() or target.is_symlink():
        old = work / "previous"
        os.rename(target, old)
    try:
        os.rename(result, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise


def read_record(path: str) -> dict | None:
    """The record of a dlenv Charliecloud image (directory or SquashFS file); None when PATH is none."""
    target = Path(path)
    if target.is_dir():
        record = target / CHARLIECLOUD_RECORD
        if not record.is_file():
            return None
        text = record.read_text(errors="replace")
    elif target.is_file() and _is_squashfs(target):
        unsquashfs = _tool("unsquashfs", "squashfs-tools")
        proc = subprocess.run([unsquashfs, "-cat", str(target), CHARLIECLOUD_RECORD], capture_output=True,
                              env={"PATH": _PATH}, check=False)
        if proc.returncode != 0:
            return None
        text = proc.stdout.decode("utf-8", "replace")
    else:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise ExportError(f"{path}: {CHARLIECLOUD_RECORD} is damaged", hint="export the image again") from None
    return data if isinstance(data, dict) else None


def _is_squashfs(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"hsqs"
