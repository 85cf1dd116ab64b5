"""The default base image: a Debian minbase rootfs bootstrapped here and imported into the engine.

No registry can be assumed, so `FROM debian:...` is not an option for the default. The image is
named by its recipe (suite, variant, SOURCE_DATE_EPOCH), never by the local image id.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker.errors

from . import engine, paths
from .config import debian_sources
from .errors import BaseImageError
from .render import base_recipe, base_ref
from .settings import load_settings

RECIPE_LABEL = "org.dlenv.base-recipe"


def base_present(client, base: dict) -> bool:
    if "image" in base:
        return engine.image_attrs(client, base["image"]) is not None
    return engine.image_attrs(client, base_ref(base)) is not None


def ensure_base(client, base: dict, log=lambda msg: None, force: bool = False) -> str:
    """Return the base reference, bootstrapping the default base when it is missing."""
    ref = base_ref(base)
    if "image" in base:
        if engine.image_attrs(client, ref) is None:
            log(f"pulling base image {ref}")
            try:
                client.images.pull(ref)
            except docker.errors.APIError as exc:
                reason = exc.explanation if isinstance(exc.explanation, str) and exc.explanation else str(exc)
                raise BaseImageError(f"base image {ref} is not available locally and could not be pulled: "
                                     f"{' '.join(reason.split())[:200]}",
                                     hint="pull or load it yourself, or use the default bootstrapped base") from None
            except docker.errors.DockerException as exc:
                raise BaseImageError(f"base image {ref} is not available locally and could not be pulled: "
                                     f"{' '.join(str(exc).split())[:200]}",
                                     hint="pull or load it yourself, or use the default bootstrapped base") from None
        return ref
    if not force and engine.image_attrs(client, ref) is not None:
        return ref
    bootstrap(client, base, log)
    return ref


def bootstrap(client, base: dict, log=lambda msg: None) -> str:
    recipe = base_recipe(base)
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise BaseImageError("mmdebstrap is not installed; it bootstraps the default Debian base",
                             hint="apt-get install mmdebstrap")
    ref = base_ref(base)
    sources = debian_sources(recipe["suite"], mirror=load_settings().get("debian_mirror"))
    workdir = Path(tempfile.mkdtemp(prefix="base-", dir=paths.state_dir()))
    try:
        sources_file = workdir / "debian.sources"
        sources_file.write_text(sources)
        tarball = workdir / "rootfs.tar"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(recipe["epoch"]))
        log(f"bootstrapping Debian {recipe['suite']} ({recipe['variant']}) with mmdebstrap")
        proc = subprocess.run(
            [tool, f"--variant={recipe['variant']}", "--mode=auto", recipe["suite"], str(tarball), str(sources_file)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-5:]
            raise BaseImageError(f"mmdebstrap failed (exit {proc.returncode}): {' | '.join(last)}",
                                 hint="check the Debian mirror (DLENV_DEBIAN_MIRROR or the host's apt sources)")
        log(f"importing the rootfs as {ref}")
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL {RECIPE_LABEL}={recipe['suite']}/{recipe['variant']}/{recipe['epoch']}",
            'CMD ["bash"]',
        ]
        return engine.import_rootfs(client, tarball, ref, changes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
