"""A project on its parent's verified image: how long `dlenv build` (with verify) takes for one added
pip package on chainermn, on a warm machine and on a machine that only pulled chainermn.

    .venv/bin/python bench/parent_image.py [--stack chainermn] [--keep-registry]

Needs the parent's promoted image (`dlenv build chainermn`), the engine, and Debian's docker-registry
(scripts/setup-host.sh installs it). Steps, each timed and printed:
  1. warm: the project (tests/fixtures/projects/chainermn-project, copied) built with --no-cache on the
     parent found in the engine;
  2. push: the parent pushed to a registry on 127.0.0.1;
  3. a machine that only has the registry: the project's and the parent's images removed locally;
  4. pulled: `dlenv build --registry` of the project: the parent is pulled by its content hash, then the
     project's own layers are built and everything is verified.
The parent's image comes back from the registry with the same image id; the script checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from registry_fixture import Registry, ensure_tools  # noqa: E402

DLENV = str(Path(sys.executable).parent / "dlenv")


def run(args, cwd=None, env=None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run([DLENV, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"dlenv {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def docker(*args) -> str:
    return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def remove_descendants(ref: str) -> int:
    """Untagged images built on `ref` (the classic builder's intermediate steps of builds FROM it): while
    one exists, the engine only untags `ref` instead of removing it, and a pull would find every layer."""
    import docker
    client = docker.from_env()
    target = client.images.get(ref).id
    removed = 0
    for _ in range(100):
        parents = {img["Id"]: img.get("ParentId") or "" for img in client.api.images(all=True)}

        def descends(image_id: str) -> bool:
            for _ in range(500):
                image_id = parents.get(image_id, "")
                if not image_id:
                    return False
                if image_id == target:
                    return True
            return False
        leaves = [i for i in parents if descends(i) and not any(p == i for p in parents.values())]
        if not leaves:
            return removed
        for leaf in leaves:
            client.api.remove_image(leaf)
            removed += 1
    return removed


def remove_repo(repo: str) -> None:
    tags = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}").split()
    for tag in tags:
        subprocess.run(["/usr/bin/docker", "rmi", tag], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="chainermn")
    args = parser.parse_args()
    env = dict(os.environ, NO_COLOR="1")
    parent = json.loads(run(["show", args.stack, "--json"])[1].stdout)["image"]
    parent_id = docker("image", "inspect", "-f", "{{.Id}}", parent)
    work = Path(tempfile.mkdtemp(prefix="dlenv-bench-parent-"))
    repo = work / "repo"
    shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "chainermn-project", repo)
    repo.chmod(0o777)
    project = json.loads(run(["show", "--json"], cwd=repo)[1].stdout)["image"].rpartition(":")[0]
    print(f"parent {parent}; project {project}")
    remove_repo(project)
    warm, proc = run(["build", "--no-cache"], cwd=repo, env=env)
    print(f"warm machine, parent found: dlenv build --no-cache of the project {warm:.1f} s "
          f"({proc.stdout.strip().splitlines()[-1]})")
    ensure_tools()
    registry = Registry(work / "registry").start()
    try:
        pushed, _ = run(["push", args.stack, "--registry", registry.address], env=env)
        print(f"push of {parent} to a registry on 127.0.0.1: {pushed:.1f} s")
        remove_repo(project)
        print(f"removed {remove_descendants(parent)} intermediate image(s) built on the parent")
        remove_repo(parent.rpartition(":")[0])
        assert not docker("images", "-q", parent), f"{parent} is still in the engine"
        remove_repo(f"{registry.address}/{parent.rpartition(':')[0]}")
        pulled, proc = run(["build", "--registry", registry.address], cwd=repo, env=env)
        line = next((ln for ln in proc.stderr.splitlines() if " builds on " in ln), "")
        print(f"machine with only the registry: dlenv build of the project {pulled:.1f} s, pull included ({line})")
        again_id = docker("image", "inspect", "-f", "{{.Id}}", parent)
        print(f"parent image id after the pull {'equals' if again_id == parent_id else 'DIFFERS FROM'} the pushed one")
        remove_repo(project)
        rebuilt, _ = run(["build", "--no-cache"], cwd=repo, env=env)
        print(f"the same machine, parent now present: dlenv build --no-cache of the project {rebuilt:.1f} s")
    finally:
        registry.stop()
        remove_repo(project)
        remove_repo(f"{registry.address}/{parent.rpartition(':')[0]}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
