"""What this host offers the HPC container runtimes a Slurm job starts the image through: which of
Charliecloud, podman and Apptainer are installed (and their versions), whether unprivileged user
namespaces work (every one of them needs them when it runs unprivileged), whether /dev/fuse is usable by
an unprivileged user (SquashFS images through squashfuse, podman's fuse-overlayfs), and whether the
Slurm daemons `dlenv verify --slurm --runtime` starts are here. Read-only; `dlenv doctor` reports it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

from builder.run.hostslurm import missing_tools

RUNTIMES = (("charliecloud", "ch-run", "--version"), ("podman", "podman", "--version"),
            ("apptainer", "apptainer", "--version"), ("singularity", "singularity", "--version"))
_VERSION = re.compile(r"([0-9]+(?:\.[0-9]+)+)")


def runtime_versions() -> dict:
    """{name: version or ""} of the runtimes found on PATH (missing ones are absent)."""
    found = {}
    for name, tool, flag in RUNTIMES:
        path = shutil.which(tool)
        if not path:
            continue
        try:
            proc = subprocess.run([path, flag], capture_output=True, text=True, timeout=10,
                                  env={**os.environ, "USER": os.environ.get("USER") or "root"})
            match = _VERSION.search(proc.stdout + proc.stderr)
        except (OSError, subprocess.TimeoutExpired):
            match = None
        found[name] = match.group(1) if match else ""
    return found


def user_namespaces() -> tuple[bool, str]:
    """(usable, why) for unprivileged user namespaces, from the kernel's settings."""
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        return False, "/proc/sys/user/max_user_namespaces is unreadable"
    if limit == 0:
        return False, "user.max_user_namespaces is 0"
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        return False, "kernel.unprivileged_userns_clone is 0"
    return True, f"user.max_user_namespaces={limit}"


def fuse_for_users() -> tuple[bool, str]:
    """(usable by every user, why) for /dev/fuse."""
    try:
        mode = os.stat("/dev/fuse").st_mode
    except OSError:
        return False, "/dev/fuse does not exist"
    others = mode & (stat.S_IROTH | stat.S_IWOTH) == (stat.S_IROTH | stat.S_IWOTH)
    return others, f"/dev/fuse mode {stat.S_IMODE(mode):04o}"


def host_slurm_missing() -> list:
    return missing_tools()
