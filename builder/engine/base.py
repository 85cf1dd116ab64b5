"""The default base image: a Debian minbase rootfs bootstrapped here and imported into the engine.

No registry can be assumed, so `FROM debian:...` is not an option for the default. The image is
named by its recipe (suite, variant, SOURCE_DATE_EPOCH) and, for a locked stack, its pinned package
set; never by the local image id. A pinned bootstrap makes apt prefer exactly the locked versions
(an apt preferences file present only while mmdebstrap runs) and refuses a result that differs.
The rootfs tarball's sha256 is kept as a label: two bootstraps of one recipe give the same tarball.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker.errors

from builder import paths
from builder.engine import dockerapi as engine
from builder.settings.host import debian_sources
from builder.errors import BaseImageError
from builder.plan.lockfile import parse_dpkg_list
from builder.plan.pins import base_recipe, base_ref, packages_digest
from builder.engine.debrepo import proxy_args
from builder.names import (APT_SOURCES_DIR, APT_SOURCES_LIST, PACKAGE_REPO_SOURCES, PACKAGES_LABEL, RECIPE_LABEL,
                           ROOTFS_LABEL)
from builder.plan.debs import repository_sources

DPKG_FORMAT = "${Package}\t${Version}\t${db:Status-Abbrev}\n"


def base_present(client, base: dict, pins: dict | None = None) -> bool:
    if "image" in base:
        return engine.image_attrs(client, base["image"]) is not None
    return engine.image_attrs(client, base_ref(base, pins)) is not None


def rootfs_sha256(client, ref: str) -> str:
    """The sha256 of the tarball a bootstrapped base was imported from ("" when not recorded)."""
    return engine.image_labels(engine.image_attrs(client, ref)).get(ROOTFS_LABEL, "")


def ensure_base(client, base: dict, log=lambda msg: None, force: bool = False, pins: dict | None = None,
                mirror: str | None = None, repo: str | None = None) -> str:
    """Return the base reference, bootstrapping the default base when it is missing (with `pins`,
    a base holding exactly those Debian package versions)."""
    ref = base_ref(base, pins)
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
    if pins and not force:
        # The base a lock was just made from holds exactly its pins: name it instead of bootstrapping again.
        plain = engine.image_attrs(client, base_ref(base))
        if plain is not None and engine.image_labels(plain).get(PACKAGES_LABEL) == packages_digest(pins):
            engine.tag(client, plain["Id"], ref)
            return ref
    bootstrap(client, base, log, pins=pins, mirror=mirror, repo=repo)
    return ref


def _mismatches(pins: dict, installed: dict) -> list[str]:
    out = []
    for name, version in sorted(pins.items()):
        got = installed.get(name)
        if got != version:
            out.append(f"{name}={version} (got {got or 'nothing'})")
    out += [f"{name}={v} (not in the lock)" for name, v in sorted(installed.items()) if name not in pins]
    return out


def bootstrap(client, base: dict, log=lambda msg: None, pins: dict | None = None, ref: str | None = None,
              mirror: str | None = None, repo: str | None = None) -> str:
    """Bootstrap and import the base (as `ref`, default its recipe's name); returns the image id."""
    recipe = base_recipe(base)
    ref = ref or base_ref(base, pins)
    workdir = Path(tempfile.mkdtemp(prefix="base-", dir=paths.state_dir()))
    try:
        tarball, sha, installed = bootstrap_rootfs(base, workdir, log, pins=pins, mirror=mirror, repo=repo)
        log(f"importing the rootfs (sha256 {sha[:16]}) as {ref}")
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL {RECIPE_LABEL}={recipe['suite']}/{recipe['variant']}/{recipe['epoch']}",
            f"LABEL {ROOTFS_LABEL}={sha}",
            f"LABEL {PACKAGES_LABEL}={packages_digest(installed)}",
            'CMD ["bash"]',
        ]
        return engine.import_rootfs(client, tarball, ref, changes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bootstrap_rootfs(base: dict, workdir: Path, log=lambda msg: None, pins: dict | None = None,
                     mirror: str | None = None, hooks_after: tuple = (), repo: str | None = None) -> tuple[Path, str, dict]:
    """mmdebstrap the base's rootfs into `workdir`: (tarball, its sha256, the installed packages).

    With `repo` (the proxy URL of dlenv's package repository, engine/debrepo.py) the pinned packages
    come from it, exactly the lock's files; without, from the mirror. Either way the rootfs's only
    apt sources name dlenv's package repository: every later apt step of a build goes there.
    `hooks_after`: extra mmdebstrap options after dlenv's own (the buildah base's customize hook)."""
    recipe = base_recipe(base)
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise BaseImageError("mmdebstrap is not installed; it bootstraps the default Debian base",
                             hint="apt-get install mmdebstrap")
    repo_sources = workdir / "dlenv.sources"
    repo_sources.write_text(repository_sources())
    tarball = workdir / "rootfs.tar"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(recipe["epoch"]))
    if repo:   # the repository's index carries the archive's priorities: minbase selects as from the mirror
        env.update(proxy_args(repo))
        sources_file = repo_sources   # no mirror needed (an offline site with a bundle has none)
    else:
        sources_file = workdir / "debian.sources"
        sources_file.write_text(debian_sources(recipe["suite"], mirror=mirror))
    packages_file = workdir / "packages.txt"
    target_sources = f'"$1{PACKAGE_REPO_SOURCES}"'
    hooks = [f"--customize-hook=chroot \"$1\" dpkg-query -W -f='{DPKG_FORMAT}' > {packages_file}",
             f'--customize-hook=rm -f "$1{APT_SOURCES_LIST}" "$1"{APT_SOURCES_DIR}/* && cp {repo_sources} {target_sources}']
    if pins:
        prefs = workdir / "dlenv-lock.pref"
        prefs.write_text("".join(f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n\n"
                                 for name, version in sorted(pins.items())))
        target = '"$1/etc/apt/preferences.d/dlenv-lock.pref"'
        hooks = [f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp {prefs} {target}',
                 f"--customize-hook=rm -f {target}"] + hooks
    log(f"bootstrapping Debian {recipe['suite']} ({recipe['variant']}{', pinned by the lock' if pins else ''}) "
        "with mmdebstrap")
    proc = subprocess.run(
        [tool, f"--variant={recipe['variant']}", "--mode=auto", *hooks, *hooks_after, recipe["suite"], str(tarball),
         str(sources_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-5:]
        raise BaseImageError(f"mmdebstrap failed (exit {proc.returncode}): {' | '.join(last)}",
                             hint="check the Debian mirror (DLENV_DEBIAN_MIRROR or the host's apt sources)")
    installed = parse_dpkg_list(packages_file.read_text())
    if pins:
        wrong = _mismatches(pins, installed)
        if wrong:
            shown = ", ".join(wrong[:8]) + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else "")
            raise BaseImageError(
                f"the Debian archive no longer has the base packages the lock pins: {shown}",
                hint="`dlenv lock STACK` resolves them again (and shows what changes), or build with "
                     "--vendor DIR or a debian_snapshot setting that still has them")
    digest = hashlib.sha256()
    with open(tarball, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return tarball, digest.hexdigest(), installed
