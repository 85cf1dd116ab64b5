"""Which CUDA libraries in /opt/nvidia the chainermn stack loads, measured WITHOUT a GPU.

Runs dlenv/chainermn:latest (as it is, never rebuilt) and, inside it:
  * imports the stack's Python modules step by step (numpy, cupy, chainer, chainermn, the CuPy
    library modules that Chainer and ChainerMN reach, a 2-process-free 'naive' communicator) and
    reads /proc/self/maps after each step: which files under /opt/nvidia are mapped;
  * lists each CuPy extension module's link dependencies into /opt/nvidia (ldd), each CUDA
    library's own dependencies, and the other CUDA libraries named inside its bytes (dlopen);
  * measures each library file's size on disk.
Without a GPU no kernel runs: cuDNN's sub-libraries, which libcudnn.so.8 opens on first use,
and everything the driver would load are not observed here. Source reading fills that gap;
BENCHMARKS.md says which is which.

    .venv/bin/python bench/cuda_libs.py [--image dlenv/chainermn:latest]

Prints a table and writes bench/results/cuda-libs.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r'''
import importlib, json, os, re, subprocess, sys, glob

def mapped():
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/opt/nvidia/"):
                out.add(os.path.basename(parts[5]))
    return out

steps = [
    ("numpy", "import numpy"),
    ("cupy", "import cupy"),
    ("chainer", "import chainer, chainer.functions, chainer.links; import chainer.backends.cuda as c; info['chainer_cuda_available'] = c.available; info['chainer_cudnn_enabled'] = c.cudnn_enabled"),
    ("chainermn", "import chainermn"),
    ("mpi4py.MPI", "from mpi4py import MPI"),
    ("chainermn naive communicator", "comm = chainermn.create_communicator('naive'); info['comm_size'] = comm.size"),
    ("cupy.cuda.nccl (pure_nccl/hierarchical communicators)", "import cupy.cuda.nccl"),
    ("cupy.cuda.cudnn (cudnn_enabled paths)", "import cupy.cuda.cudnn"),
    ("cupy.cublas (matmul, linear layers)", "import cupy.cublas, cupy_backends.cuda.libs.cublas"),
    ("cupy.cuda.curand (cupy.random)", "import cupy.random, cupy.cuda.curand"),
    ("cupy.cuda.cufft (cupy.fft)", "import cupy.fft, cupy.cuda.cufft"),
    ("cupy.linalg / cusolver", "import cupy.linalg, cupy_backends.cuda.libs.cusolver, cupyx.cusolver"),
    ("cupyx.scipy.sparse / cusparse", "import cupyx.scipy.sparse, cupy_backends.cuda.libs.cusparse"),
    ("cupy.cuda.compiler (nvrtc, ElementwiseKernel)", "import cupy.cuda.compiler, cupy_backends.cuda.libs.nvrtc"),
]
info = {}
result = {"steps": [], "info": info}
seen = set()
for name, code in steps:
    err = None
    try:
        exec(code, globals())
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"[:300]
    now = mapped()
    result["steps"].append({"step": name, "new": sorted(now - seen), "error": err})
    seen |= now
result["loaded_total"] = sorted(seen)

# Link dependencies (ldd: what the loader maps with the module) into /opt/nvidia.
def ldd(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return sorted({os.path.basename(m) for m in re.findall(r"=> (/opt/nvidia/\S+)", out)})

sp = "/opt/venv/lib/python3.11/site-packages"
result["cupy_module_links"] = {}
for path in sorted(glob.glob(sp + "/cupy*/**/*.so", recursive=True)):
    deps = ldd(path)
    if deps:
        result["cupy_module_links"][os.path.relpath(path, sp).split(".cpython")[0]] = deps

libs = sorted(p for p in glob.glob("/opt/nvidia/*/nvidia/*/lib/lib*.so*") if os.path.isfile(p))
names = {os.path.basename(p) for p in libs}
result["libs"] = {}
for path in libs:
    data = open(path, "rb").read()
    base = os.path.basename(path)
    stems = {re.split(r"\.so", n)[0] for n in names} - {re.split(r"\.so", base)[0]}
    # Names of other CUDA libraries inside the file: dlopen candidates (and DT_NEEDED entries).
    named = sorted(s for s in stems if re.search(re.escape(s.encode()) + rb"\.so", data))
    result["libs"][base] = {"path": path, "package": path.split("/")[5], "bytes": len(data),
                            "links": ldd(path), "names_in_bytes": named}
print(json.dumps(result))
'''


FEATURE_PROBE = r'''
import json, os, warnings
warnings.simplefilter("ignore")
r = {}
def attempt(name, fn):
    try:
        v = fn()
        r[name] = "ok" if v is None else f"ok {v}"
    except BaseException as exc:
        r[name] = f"FAIL {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
def stack():
    import chainer, chainer.functions, chainer.links, chainermn
    import chainer.backends.cuda as c
    return f"cuda.available={c.available} cudnn_enabled={c.cudnn_enabled}"
attempt("import chainer, chainermn", stack)
attempt("chainermn naive communicator (MPI)", lambda: __import__("chainermn").create_communicator("naive").size)
attempt("cuBLAS module", lambda: __import__("cupy_backends.cuda.libs.cublas") and None)
attempt("cuDNN getVersion", lambda: __import__("cupy_backends.cuda.libs.cudnn", fromlist=["x"]).getVersion())
attempt("NCCL get_version", lambda: __import__("cupy.cuda.nccl", fromlist=["x"]).get_version())
attempt("cuRAND getVersion", lambda: __import__("cupy_backends.cuda.libs.curand", fromlist=["x"]).getVersion())
attempt("cuFFT getVersion", lambda: __import__("cupy.cuda.cufft", fromlist=["x"]).getVersion())
attempt("cuSOLVER module", lambda: __import__("cupy_backends.cuda.libs.cusolver") and None)
attempt("cuSPARSE module", lambda: __import__("cupy_backends.cuda.libs.cusparse") and None)
attempt("NVRTC getVersion", lambda: __import__("cupy_backends.cuda.libs.nvrtc", fromlist=["x"]).getVersion())
print(json.dumps(r))
'''

# Files removed in a throwaway container before FEATURE_PROBE runs: what breaks without a GPU.
REMOVALS = {
    "nothing": [],
    "unreferenced: cusolverMg, nvblas, cufftw, cudart": ["libcusolverMg.so.11", "libnvblas.so.12", "libcufftw.so.11", "libcudart.so.12"],
    "cuFFT": ["libcufft.so.11", "libcufftw.so.11"],
    "cuSOLVER": ["libcusolver.so.11", "libcusolverMg.so.11"],
    "cuSPARSE": ["libcusparse.so.12"],
    "nvJitLink": ["libnvJitLink.so.12"],
    "cuRAND": ["libcurand.so.10"],
    "NVRTC": ["libnvrtc.so.12", "libnvrtc-builtins.so.12.6"],
    "cuDNN adv (RNN, attention)": ["libcudnn_adv_infer.so.8", "libcudnn_adv_train.so.8"],
    "cuDNN (all)": ["libcudnn*.so.8"],
    "NCCL": ["libnccl.so.2"],
    "cuBLAS": ["libcublas.so.12", "libcublasLt.so.12", "libnvblas.so.12"],
}


def removal(image: str, files: list[str]) -> dict:
    rm = " ".join(f"/opt/nvidia/*/nvidia/*/lib/{f}" for f in files)
    script = (f"rm -f {rm} && ldconfig && " if files else "") + "exec python -"
    proc = subprocess.run(["docker", "run", "--rm", "-i", "--user", "root", image, "bash", "-c", script],
                          input=FEATURE_PROBE, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"probe": f"FAIL rc={proc.returncode}: {proc.stderr[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="dlenv/chainermn:latest")
    args = parser.parse_args()
    proc = subprocess.run(["docker", "run", "--rm", "-i", args.image, "python", "-"], input=PROBE,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["image"] = args.image
    result["removals"] = {name: {"files": files, "result": removal(args.image, files)}
                          for name, files in REMOVALS.items()}
    result["gpu"] = False
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda-libs.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"imports in {args.image} (no GPU): CUDA libraries mapped after each step")
    for step in result["steps"]:
        new = ", ".join(step["new"]) or "-"
        print(f"  {step['step']:<55} {new}" + (f"   [{step['error']}]" if step["error"] else ""))
    print("  info:", result["info"])
    print("\nCuPy extension modules that link into /opt/nvidia")
    for mod, deps in result["cupy_module_links"].items():
        print(f"  {mod:<45} {', '.join(deps)}")
    print("\nlibrary sizes (MB = 1e6 bytes), loaded on import, link deps, other CUDA libs named inside")
    loaded = set(result["loaded_total"])
    for name, lib in sorted(result["libs"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"  {name:<28} {lib['bytes'] / 1e6:8.1f}  {'yes' if name in loaded else 'no ':<4}"
              f" {', '.join(lib['links']) or '-':<45} {', '.join(lib['names_in_bytes']) or '-'}")

    print("\nremoved from a throwaway container -> what fails (no GPU: imports, version calls)")
    baseline = result["removals"]["nothing"]["result"]
    for name, entry in result["removals"].items():
        res = entry["result"]
        changed = {k: v for k, v in res.items() if v != baseline.get(k)} if name != "nothing" else res
        print(f"  {name}:")
        for k, v in (changed or {"(no change)": ""}).items():
            print(f"      {k:<36} {v}")


if __name__ == "__main__":
    main()
