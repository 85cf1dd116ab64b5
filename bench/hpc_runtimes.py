"""Figures for the image under a host Slurm (issue #23): `dlenv export charliecloud` time and size
(directory and SquashFS) for a stack, and per runtime the time a 2-node job takes to start the image
(`true`) and to run the ChainerMN smoke, under a Slurm started on this host (slurmd as root, jobs as a
temporary unprivileged user), through Charliecloud and rootless podman; and the disk each step holds at
its peak (free space sampled every 0.2 s: other writers on the machine count too, so upper bounds).

Needs root, the stack's promoted image (`dlenv build STACK`) and the tools scripts/setup-host.sh installs.
The Slurm, its user and every file the bench writes are removed at the end. Prints a table; figures,
not assertions.

    .venv/bin/python bench/hpc_runtimes.py [--stack chainermn] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DLENV = str(Path(sys.executable).parent / "dlenv")
sys.path.insert(0, str(ROOT))

from builder.engine import dockerapi  # noqa: E402
from builder.engine.archive import save_tagged  # noqa: E402
from builder.run import hostslurm  # noqa: E402
from builder.verify.hostslurm import ONE_HOST_ENV, PODMAN_STORAGE_CONF  # noqa: E402

SMOKE = ROOT / "stacks" / "checks" / "chainermn_smoke.py"


def dlenv(*args: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([DLENV, *args], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", **env})
    if proc.returncode != 0:
        raise SystemExit(f"dlenv {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@contextmanager
def peak_use(path: Path):
    """Yields a dict whose "bytes" is, afterwards, the most disk the block took on `path`'s filesystem."""
    out, done = {"bytes": 0}, threading.Event()
    before = shutil.disk_usage(path).free

    def sample():
        while not done.is_set():
            out["bytes"] = max(out["bytes"], before - shutil.disk_usage(path).free)
            time.sleep(0.2)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()


def job(cluster, name: str, script: str, files=()) -> hostslurm.JobResult:
    folder = hostslurm.job_folder(cluster, name)
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
        hostslurm.give_to_job_user(cluster, folder / f.name)
    path = folder / "job.sbatch"
    path.write_text(script)
    hostslurm.give_to_job_user(cluster, path)
    result = hostslurm.submit_and_wait(cluster, path, 1200, extra_env=ONE_HOST_ENV)
    if result.exit_code != 0:
        raise SystemExit(f"job {name} failed ({result.state}, {result.exit_code}):\n{result.output[-2000:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="chainermn")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each job after the first")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (slurmd starts the jobs as another user)")
    state = Path(tempfile.mkdtemp(prefix="bench-hpc-"))
    env = {"DLENV_STATE_DIR": str(state)}
    show = json.loads(dlenv("show", args.stack, "--json", env=env)[1])
    rows = []
    cluster = hostslurm.up(2, state)
    try:
        images = cluster.folder / "images"
        image_bytes = dockerapi.connect().images.get(show["image"]).attrs["Size"]
        rows.append(("the image (Docker's Size)", "", f"{image_bytes / 1e9:.2f} GB"))
        with peak_use(images) as peak:
            seconds, _ = dlenv("export", "charliecloud", args.stack, "-o", str(images / "dir"), env=env)
        rows.append(("export charliecloud --format dir", f"{seconds:.1f} s", f"{size(images / 'dir') / 1e9:.2f} GB, "
                     f"peak {peak['bytes'] / 1e9:.2f} GB ({peak['bytes'] / image_bytes:.2f} x)"))
        with peak_use(images) as peak:
            seconds, _ = dlenv("export", "charliecloud", args.stack, "--format", "squashfs", "-o",
                               str(images / "img.sqfs"), env=env)
        rows.append(("export charliecloud --format squashfs", f"{seconds:.1f} s",
                     f"{size(images / 'img.sqfs') / 1e9:.2f} GB, peak {peak['bytes'] / 1e9:.2f} GB "
                     f"({peak['bytes'] / image_bytes:.2f} x)"))
        (images / "img.sqfs").unlink()
        start = time.perf_counter()
        save_tagged(dockerapi.connect(), show["image"], images / "img.tar")
        (images / "img.tar").chmod(0o644)
        rows.append(("docker save (podman's archive)", f"{time.perf_counter() - start:.1f} s",
                     f"{size(images / 'img.tar') / 1e9:.2f} GB"))
        config = Path(cluster.home) / ".config" / "containers"
        config.mkdir(parents=True)
        (config / "storage.conf").write_text(PODMAN_STORAGE_CONF)
        subprocess.run(["chown", "-R", f"{cluster.uid}:{cluster.gid}", str(config.parent)], check=True)
        for runtime, image in (("charliecloud", images / "dir"), ("podman", images / "img.tar")):
            for what, command, files in (("start (true)", ["true"], ()),
                                         ("ChainerMN smoke, 2 ranks", ["python", "chainermn_smoke.py"], (SMOKE,))):
                script = dlenv("export", "slurm", args.stack, "--runtime", runtime, "-N", "2", "--gpus-per-node", "0",
                               "--time", "00:20:00", "--image-file", str(image), "--", *command, env=env)[1]
                times = []
                for i in range(args.repeat + 1):
                    with peak_use(Path(cluster.home)) as peak:
                        result = job(cluster, f"{runtime}-{what.split()[0]}-{i}", script, files)
                    times.append(result.seconds)
                    if i == 0 and runtime == "podman" and what.startswith("start"):
                        rows.append(("podman: the first job's disk at its peak (2 nodes, one storage)", "",
                                     f"{peak['bytes'] / 1e9:.2f} GB ({peak['bytes'] / image_bytes:.2f} x the image)"))
                first = f"first {times[0]:.1f} s" + (" (puts the image into the nodes' storage)" if runtime == "podman"
                                                       and what.startswith("start") else "")
                rest = sorted(times[1:])
                rows.append((f"{runtime}: {what}", first, f"then median {rest[len(rest) // 2]:.1f} s" if rest else ""))
    finally:
        hostslurm.down(cluster)
        shutil.rmtree(state, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"stack {args.stack} ({show['image']}), 2 Slurm nodes on this host, job times from sbatch to the end")
    for name, a, b in rows:
        print(f"  {name.ljust(width)}  {a:>12}  {b}")


if __name__ == "__main__":
    main()
