"""The naive single-stage baseline (bench/naive/Dockerfile) next to dlenv's chainermn image.

Builds the naive image (classic builder through docker-py, like builder/engine.py), then measures
its size, the size of our runtime image (dlenv/chainermn:latest, used as it is, never rebuilt) and
its payload, and breaks down what the naive image carries that ours does not: compilers and
headers (Debian packages only the naive image has), the Open MPI source and build tree, pip's
cache, apt lists, the CUDA libraries kept twice (installed in the venv and cached by pip), the CA
bundle and the rest. Prints a table and writes bench/results/naive-baseline.json.

    .venv/bin/python bench/naive_baseline.py            # build (if missing, layer cache used) and measure
    .venv/bin/python bench/naive_baseline.py --rebuild  # build with --no-cache first (a cold build)
    .venv/bin/python bench/naive_baseline.py --remove   # ... and remove the naive image afterwards

The build needs the host's CA bundle for pip (copied into a temporary context) and passes the
host's pip index and proxy settings as build arguments (builder.settings.host.pip_build_args).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAIVE_TAG = "dlenv-bench/naive-chainermn:latest"
OURS = "dlenv/chainermn:latest"
RESULTS = ROOT / "bench" / "results"


def build_naive(client, no_cache: bool) -> dict:
    from builder.settings.host import find_ca_bundle, pip_build_args

    ca = find_ca_bundle()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "naive-build.log"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "bench" / "naive" / "Dockerfile", Path(tmp) / "Dockerfile")
        ca_bytes = ca.read() or Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
        (Path(tmp) / "ca.crt").write_bytes(ca_bytes)
        start = time.perf_counter()
        with log_path.open("w") as log:
            for chunk in client.api.build(path=tmp, tag=NAIVE_TAG, decode=True, rm=True, forcerm=True,
                                          nocache=no_cache, buildargs=pip_build_args()):
                if "stream" in chunk:
                    log.write(chunk["stream"])
                    log.flush()
                if "error" in chunk:
                    raise SystemExit(f"naive build failed: {chunk['error']} (log: {log_path})")
        elapsed = time.perf_counter() - start
    log_text = log_path.read_text()
    # Cold means no step came from the layer cache, whatever --no-cache said.
    cached = log_text.count("Using cache")
    built = {"naive_build_s": round(elapsed, 1), "naive_build_cold": cached == 0,
             "naive_build_cached_steps": cached, "naive_build_steps": log_text.count("\nStep ") + log_text.startswith("Step "),
             "naive_build_log": str(log_path.relative_to(ROOT))}
    (RESULTS / "naive-build.json").write_text(json.dumps(built, indent=2) + "\n")
    return built


# Our build stage's apt packages (templates: the "build" stage), for telling compilers and headers
# from the recommended packages a plain `apt-get install` adds.
BUILD_STAGE_PACKAGES = ("build-essential ca-certificates dpkg-dev file perl python3 python3-dev "
                        "python3-venv xz-utils zlib1g-dev")

NAIVE_DU = ["/opt/venv", "/opt/venv/lib/python3.11/site-packages/nvidia", "/root/.cache/pip",
            "/usr/src", "/usr/src/openmpi-4.1.4", "/usr/local", "/usr/local/include", "/usr/local/lib",
            "/var/lib/apt/lists", "/var/cache/apt", "/var/cache/debconf", "/var/log", "/tmp",
            "/usr/include", "/usr/lib/gcc", "/usr/libexec/gcc", "/usr/share/doc", "/usr/share/man",
            "/usr/local/share/ca-certificates/build-ca.crt"]
OURS_DU = ["/opt/venv", "/opt/nvidia", "/opt/openmpi", "/var/lib/apt/lists", "/var/cache/apt",
           "/root/.cache", "/usr/src", "/usr/share/doc"]


def run(client, image: str, script: str, user: str | None = None) -> str:
    out = client.containers.run(image, ["bash", "-c", script], remove=True, user=user or "root",
                                stderr=True, environment={"OMPI_MCA_opal_warn_on_missing_libcuda": "0"})
    return out.decode()


def du(client, image: str, paths: list[str]) -> dict:
    quoted = " ".join(paths)
    out = run(client, image, f"for p in {quoted}; do [ -e $p ] && du -sb $p; done; true")
    return {line.split("\t")[1]: int(line.split("\t")[0]) for line in out.splitlines() if "\t" in line}


def packages(client, image: str) -> dict:
    out = run(client, image, "dpkg-query -W -f '${Installed-Size} ${Package}\\n'")
    pkgs = {}
    for line in out.splitlines():
        size, _, name = line.partition(" ")
        if size.isdigit():
            pkgs[name.split(":")[0]] = int(size) * 1024   # Installed-Size is in KiB
    return pkgs


def build_stage_set(client, base: str) -> set:
    """Packages our build stage installs on top of the base (apt simulation, nothing installed)."""
    out = run(client, base, "apt-get update -qq >/dev/null && apt-get install -s --no-install-recommends "
                            f"{BUILD_STAGE_PACKAGES} | awk '/^Inst /{{print $2}}'")
    return {line.split(":")[0] for line in out.split()}


def measure(client) -> dict:
    naive = client.images.get(NAIVE_TAG)
    ours = client.images.get(OURS)
    base_ref = ours.labels.get("org.dlenv.base", "dlenv/base:bookworm-minbase-1276fbca1838")
    base = client.images.get(base_ref)
    f: dict = {"naive_image": NAIVE_TAG, "ours_image": OURS, "ours_image_id": ours.id,
               "naive_image_bytes": naive.attrs["Size"], "ours_image_bytes": ours.attrs["Size"],
               "base_image": base_ref, "base_bytes": base.attrs["Size"]}
    f["ours_du"] = du(client, OURS, OURS_DU)
    f["ours_payload_bytes"] = sum(f["ours_du"].get(p, 0) for p in ("/opt/venv", "/opt/nvidia", "/opt/openmpi"))
    f["naive_du"] = du(client, NAIVE_TAG, NAIVE_DU)

    naive_pkgs, ours_pkgs = packages(client, NAIVE_TAG), packages(client, OURS)
    build_set = build_stage_set(client, base_ref)
    only_naive = {p: s for p, s in naive_pkgs.items() if p not in ours_pkgs}
    f["packages_only_naive"] = {
        "build_stage": {p: s for p, s in sorted(only_naive.items()) if p in build_set},
        "recommends_and_other": {p: s for p, s in sorted(only_naive.items()) if p not in build_set},
    }
    f["packages_only_ours"] = sorted(p for p in ours_pkgs if p not in naive_pkgs)

    f["naive_history"] = [{"bytes": layer["Size"], "created_by": layer["CreatedBy"][-160:]}
                          for layer in naive.history() if layer["Size"]]
    # The naive image works: same imports, CUDA-aware Open MPI.
    code = ("import chainer, chainermn, cupy, mpi4py.MPI as M; import chainer.backends.cuda as c; "
            "print(chainer.__version__, cupy.__version__, M.Get_library_version().split(',')[0], "
            "'cuda.available=%s' % c.available)")
    env = {"OMPI_MCA_opal_warn_on_missing_libcuda": "0"}
    f["naive_check"] = " | ".join([
        client.containers.run(NAIVE_TAG, ["python", "-c", code], remove=True, environment=env).decode().strip(),
        run(client, NAIVE_TAG, "ompi_info --parsable --all | grep mpi_built_with_cuda_support:value").strip()])

    nd = f["naive_du"]
    pip_nvidia = nd.get("/opt/venv/lib/python3.11/site-packages/nvidia", 0)
    items = [
        ("compilers and headers (Debian packages of our build stage only)",
         sum(f["packages_only_naive"]["build_stage"].values()), "dpkg Installed-Size"),
        ("recommended Debian packages (plain apt-get install)",
         sum(f["packages_only_naive"]["recommends_and_other"].values()), "dpkg Installed-Size"),
        ("Open MPI source tarballs and build tree (/usr/src)", nd.get("/usr/src", 0), "du"),
        ("Open MPI headers, static and libtool files beyond our prefix",
         nd.get("/usr/local", 0) - f["ours_du"].get("/opt/openmpi", 0), "du /usr/local minus our /opt/openmpi"),
        ("pip cache (/root/.cache/pip)", nd.get("/root/.cache/pip", 0), "du"),
        ("apt lists (/var/lib/apt/lists)", nd.get("/var/lib/apt/lists", 0), "du"),
        ("apt cache (/var/cache/apt)", nd.get("/var/cache/apt", 0) - f["ours_du"].get("/var/cache/apt", 0), "du, ours subtracted"),
        ("venv difference (naive venv incl. CUDA wheels minus our /opt/venv + /opt/nvidia)",
         nd.get("/opt/venv", 0) - f["ours_du"].get("/opt/venv", 0) - f["ours_du"].get("/opt/nvidia", 0), "du"),
        ("CA bundle left in the image", nd.get("/usr/local/share/ca-certificates/build-ca.crt", 0), "du"),
    ]
    f["extra"] = [{"what": w, "bytes": b, "how": h} for w, b, h in items]
    f["extra_sum_bytes"] = sum(b for _, b, _ in items)
    f["difference_bytes"] = f["naive_image_bytes"] - f["ours_image_bytes"]
    f["pip_nvidia_in_venv_bytes"] = pip_nvidia
    return f


def report(f: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "naive-baseline.json").write_text(json.dumps(f, indent=2) + "\n")
    gb = 1e9
    print(f"naive single-stage vs dlenv chainermn on {f['machine']}")
    if "naive_build_s" in f:
        print(f"  naive build ({'cold' if f['naive_build_cold'] else 'cached'}): {f['naive_build_s']:.0f} s")
    rows = [("naive image", f["naive_image_bytes"]), ("dlenv/chainermn runtime image", f["ours_image_bytes"]),
            ("  payload /opt/nvidia", f["ours_du"].get("/opt/nvidia", 0)),
            ("  payload /opt/venv", f["ours_du"].get("/opt/venv", 0)),
            ("  payload /opt/openmpi", f["ours_du"].get("/opt/openmpi", 0)),
            ("  base image", f["base_bytes"]),
            ("  payload + base", f["ours_payload_bytes"] + f["base_bytes"])]
    for name, b in rows:
        print(f"  {name:<40} {b / gb:7.3f} GB")
    print(f"  ours / (payload + base) = {f['ours_image_bytes'] / (f['ours_payload_bytes'] + f['base_bytes']):.3f}x;"
          f" naive / ours = {f['naive_image_bytes'] / f['ours_image_bytes']:.2f}x")
    print("\nwhat the naive image carries that ours does not")
    for item in f["extra"]:
        print(f"  {item['what']:<88} {item['bytes'] / gb:7.3f} GB")
    print(f"  {'sum of the above':<88} {f['extra_sum_bytes'] / gb:7.3f} GB")
    print(f"  {'image size difference (naive - ours)':<88} {f['difference_bytes'] / gb:7.3f} GB")
    big = sorted(list(f["packages_only_naive"]["build_stage"].items())
                 + list(f["packages_only_naive"]["recommends_and_other"].items()), key=lambda kv: -kv[1])[:10]
    print("\nlargest Debian packages only in the naive image:", ", ".join(f"{p} {s / 1e6:.0f} MB" for p, s in big))
    print("packages only in ours:", ", ".join(f["packages_only_ours"]) or "-")
    print("\nnaive layers (docker history, non-empty)")
    for layer in f["naive_history"]:
        print(f"  {layer['bytes'] / gb:7.3f} GB  {' '.join(layer['created_by'].split())[:110]}")
    print(f"\nnaive image check: {f['naive_check']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rebuild", action="store_true", help="build the naive image with --no-cache")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--remove", action="store_true", help="remove the naive image when done")
    args = parser.parse_args()

    import docker

    client = docker.from_env(timeout=3600)
    figures: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}"}
    try:
        client.images.get(NAIVE_TAG)
        have = True
    except docker.errors.ImageNotFound:
        have = False
    if args.rebuild or not have:
        figures.update(build_naive(client, no_cache=args.rebuild))
    elif (RESULTS / "naive-build.json").exists():  # the timing of the build that made the image
        figures.update(json.loads((RESULTS / "naive-build.json").read_text()))
    if args.build_only:
        print(json.dumps(figures, indent=2))
        return
    figures.update(measure(client))
    report(figures)
    if args.remove:
        client.images.remove(NAIVE_TAG)


if __name__ == "__main__":
    main()
