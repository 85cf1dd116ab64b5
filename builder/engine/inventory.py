"""Collecting what an image holds: one short-lived container of the image lists it, and
`builder.outputs.sbom.model` makes the `Inventory` from that listing.

`collect(client, image)` runs the container as the image's own default user, with no network and
nothing written: Debian packages (dpkg's database), Python distributions that the venv's
interpreter sees (`importlib.metadata` over its `sys.path`) and those of every `pip --target`
prefix under /opt/nvidia, and the version that a compiled component reports (`ompi_info --version`).
"""

from __future__ import annotations

import docker.errors

from builder.engine import dockerapi as engine
from builder.engine.containers import ContainerOptions, start_container
from builder.errors import EngineError
from builder.names import NVIDIA_PREFIXES
from builder.outputs.sbom.model import Inventory, inventory_from_output


COLLECT_TIMEOUT = 180

# Runs as the image's default user with `sh -c SCRIPT dlenv-sbom PYTHON_SCRIPT`; reads only.
_SH = r"""cd / || exit 1
echo '### os'
cat /etc/os-release 2>/dev/null
echo '### dpkg'
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f '${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n' || echo '### failed dpkg-query'
fi
echo '### python'
if [ -x /opt/venv/bin/python ]; then PY=/opt/venv/bin/python; else PY=$(command -v python3 || true); fi
if [ -n "$PY" ]; then "$PY" -c "$1" || echo '### failed python'; fi
echo '### ompi_info'
if command -v ompi_info >/dev/null 2>&1; then ompi_info --version 2>/dev/null | head -n 1; fi
echo '### end'
"""

_PY = r"""
import glob, importlib.metadata as md, json, os, sys
def emit(paths):
    for d in md.distributions(path=paths):
        name = d.metadata["Name"]
        if not name:
            continue
        try:
            where = str(d.locate_file("")).rstrip("/")
        except Exception:
            where = ""
        print(json.dumps({"name": name, "version": d.version, "location": where}))
emit([p for p in sys.path if p and os.path.abspath(p) != os.getcwd() and os.path.exists(p)])
prefixes = set(glob.glob("%(nvidia)s/*/")) | {os.path.dirname(p) + "/" for p in glob.glob("/opt/*/*.dist-info")}
for prefix in sorted(prefixes):
    emit([prefix.rstrip("/")])
""" % {"nvidia": NVIDIA_PREFIXES}


def collect(client, image: str, catalog=None, timeout: int = COLLECT_TIMEOUT) -> Inventory:
    """Run one container of `image` (default user, no network) that lists its packages."""
    attrs = engine.image_attrs(client, image)
    if attrs is None:
        raise EngineError(f"image {image} not found", hint="build it first with `dlenv build`")
    opts = ContainerOptions(shm_size=None, init=False, network_name="none")
    container = start_container(client, image, opts, "sbom", command=["/bin/sh", "-c", _SH, "dlenv-sbom", _PY])
    try:
        try:
            status = container.wait(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - requests' read timeout, or the engine went away
            raise EngineError(f"collecting the SBOM of {image} did not finish in {timeout}s: {exc}") from None
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        if status.get("StatusCode", 0) != 0:
            err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
            raise EngineError(f"collecting the SBOM of {image} failed (exit status {status.get('StatusCode')}): "
                              f"{' '.join(err.split())[-300:]}",
                              hint="the image needs /bin/sh; dpkg-query and python are used when present")
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
    return inventory_from_output(out, attrs, image=image, catalog=catalog)
