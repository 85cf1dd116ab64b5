"""The main job for real: `dlenv build chainermn` builds, verifies (2-rank ChainerMN run included)
and promotes; a second build is a no-op; `dlenv verify --json` reports every required check."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

REQUIRED_CHECKS = {
    "Open MPI is CUDA-aware",
    "Open MPI is 4.1.4",
    "chainer and chainermn import",
    "chainer sees CUDA and cuDNN",
    "mpi4py linked to the image's Open MPI",
    "mpi4py built with the image's mpicc",
    "libcudnn loadable",
    "libnccl loadable",
    "default user is not root",
    "ChainerMN trains with 2 ranks",
    # the network extras (README "Networks"): built in, and UCX really carries the ranks' traffic
    "UCX configured with CUDA",
    "UCX built with CUDA, verbs and mlx5",
    "Open MPI has the ucx PML and the external PMIx",
    "Open MPI selects the ucx PML on every rank",
    "libibverbs loadable",
    "PMIx is 4.2.2",
}


def test_chainermn_builds_verifies_and_noops(docker_client, run_dlenv, tmp_path):
    env = {"DLENV_STATE_DIR": str(tmp_path / "state")}
    # --locked: CI builds from the shipped lock and fails rather than write another one.
    built = run_dlenv("build", "chainermn", "--locked", env=env, timeout=3000)
    print(built.stdout, built.stderr[-3000:])
    assert built.returncode == 0, built.stderr[-5000:]
    show = json.loads(run_dlenv("show", "chainermn", "--json", check=True).stdout)
    attrs = docker_client.api.inspect_image(show["image"])
    assert attrs["Config"]["Labels"]["org.dlenv.content-hash"] == show["content_hash"]
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["Labels"]["org.dlenv.lock"] == show["lock"]["digest"]

    again = run_dlenv("build", "chainermn", env=env)
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stderr

    verified = run_dlenv("verify", "chainermn", "--json", env=env, timeout=900)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["passed"], json.dumps(report, indent=1)[-5000:]
    by_name = {c["name"]: c for c in report["checks"]}
    missing = REQUIRED_CHECKS - set(by_name)
    assert not missing, missing
    assert all(by_name[n]["status"] == "passed" for n in REQUIRED_CHECKS)
    assert by_name["installed packages are the locked versions"]["status"] == "passed"
    smoke_lines = [ln for ln in by_name["ChainerMN trains with 2 ranks"]["output"].splitlines() if ln.startswith('{"size"')]
    smoke = json.loads(smoke_lines[-1])
    assert smoke["size"] == 2 and smoke["params_equal"] and smoke["last_loss"] < smoke["first_loss"]
    print(f"verify: {report['counts']} in {report['seconds']}s; smoke {smoke}")


def test_chainermn_across_two_containers(docker_client, run_dlenv, tmp_path):
    """`verify --nodes 2`: two containers on a private network, Open MPI launching over ssh with keys
    made for the run; afterwards no container or network of the run is left."""
    networks_before = {n.id for n in docker_client.networks.list()}
    result = run_dlenv("verify", "chainermn", "--nodes", "2", "--json", timeout=900)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["passed"], json.dumps(report, indent=1)[-5000:]
    assert report["nodes"] == 2
    smoke = next(c for c in report["checks"] if c["name"] == "ChainerMN trains with 2 ranks (2 containers)")
    assert smoke["status"] == "passed"
    line = next(ln for ln in smoke["output"].splitlines() if ln.startswith('{"size"'))
    data = json.loads(line)
    assert data["size"] == 2 and data["params_equal"]
    assert "--host" in smoke["command"] and "plm_rsh_agent" in smoke["command"]
    pml = next(c for c in report["checks"] if c["name"] == "Open MPI selects the ucx PML on every rank (2 containers)")
    assert pml["status"] == "passed" and '"pml": ["ucx", "ucx"]' in pml["output"]   # UCX over TCP between containers
    assert {n.id for n in docker_client.networks.list()} == networks_before
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=verify"})
    # The keys of the run lived in the containers only: the image has no private key anywhere.
    out = docker_client.containers.run(show_image(run_dlenv), ["bash", "-c",
                                       "grep -rl 'PRIVATE KEY' /etc /home /opt /workspace 2>/dev/null | wc -l"],
                                       remove=True)
    assert out.decode().strip() == "0"


def show_image(run_dlenv) -> str:
    return json.loads(run_dlenv("show", "chainermn", "--json", check=True).stdout)["image"]


TRAIN = '''
import os, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(f"rank {comm.rank} of {comm.size} on {os.uname().nodename}", flush=True)
total = comm.allreduce(comm.rank + 1)
with open(f"rank-{comm.rank}.txt", "w") as f:
    f.write(str(total))
sys.exit(int(os.environ.get("EXIT_WITH", "0")) if comm.rank == 1 else 0)
'''


@pytest.mark.parametrize("nodes", [1, 2])
def test_dlenv_run_mpi(docker_client, run_dlenv, tmp_path, nodes):
    ws = tmp_path / "ws"
    ws.mkdir()
    ws.chmod(0o777)
    (ws / "train.py").write_text(TRAIN)
    proc = run_dlenv("run", "chainermn", "-n", "4", "--nodes", str(nodes), "--", "python", "train.py", cwd=ws,
                     timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.splitlines()[0]] and proc.stdout.startswith("rank 0 of 4")
    assert sorted(p.name for p in ws.glob("rank-*.txt")) == [f"rank-{i}.txt" for i in range(4)]
    assert {p.read_text() for p in ws.glob("rank-*.txt")} == {"10"}
    every = run_dlenv("run", "chainermn", "-n", "4", "--nodes", str(nodes), "--all-ranks", "--", "python",
                      "train.py", cwd=ws, timeout=600)
    hosts = {line.split(" on ")[1] for line in every.stdout.splitlines() if " on " in line}
    assert sum(line.startswith("[rank ") for line in every.stdout.splitlines()) == 4
    assert len(hosts) == nodes
    failing = run_dlenv("run", "chainermn", "-n", "2", "--nodes", str(nodes), "-e", "EXIT_WITH=3", "--", "python",
                        "train.py", cwd=ws, timeout=600)
    assert failing.returncode == 3, (failing.args, failing.stdout, failing.stderr)
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=run"})
    assert not docker_client.networks.list(filters={"label": "org.dlenv.role=run"})


def test_ca_bundle_of_the_build_is_in_no_runtime_layer(docker_client, run_dlenv, tmp_path):
    """The host CA bundle the build used (its certificates that no public bundle in the image has)
    is in the build stage (the scan's positive control) and nowhere in the runtime image."""
    from builder.engine.context import write_context
    from builder.engine.debrepo import build_args, repository
    from builder.engine.store import obtain
    from builder.pipeline.packages import lock_files, package_sources
    from builder.plan.plan import plan
    from builder.settings.host import find_ca_bundle, pip_build_args
    from security import private_certificates, scan_image

    bundle = find_ca_bundle()
    if bundle.path is None:
        pytest.skip("no CA bundle configured on this host: the build used the image's own certificates")
    image = show_image(run_dlenv)
    # Public bundles the image ships on purpose (Debian's, and certifi's inside pip and friends):
    # a host certificate found in one of those is public, not a leak.
    public = docker_client.containers.run(image, ["bash", "-c", "cat /etc/ssl/certs/ca-certificates.crt "
                                                  "$(find /opt -path '*certifi/cacert.pem')"], remove=True)
    needles = private_certificates(bundle.read(), public) or [bundle.read()]
    findings, layers = scan_image(docker_client, image, needles)
    assert layers >= 5 and not findings, findings

    p = plan("chainermn")
    build_tag = f"dlenv-test/chainermn-build:{p.content_hash[:16]}"
    context = tmp_path / "context"
    context.mkdir()
    write_context(p.context, context, bundle.read())
    # As dlenv builds it: apt and pip read dlenv's package repository (the files are in the store since
    # the build above), so every step is the cached one.
    files = lock_files(p.lock)[0]
    assert not obtain(files, package_sources(p)).gone      # in the store already, unless it was trimmed
    with repository(files, "bookworm") as url:
        for chunk in docker_client.api.build(path=str(context), tag=build_tag, target="build", decode=True, rm=True,
                                             network_mode="host",
                                             buildargs={"DLENV_CONTENT_HASH": p.content_hash, **pip_build_args(),
                                                        **build_args(url)}):
            assert "error" not in chunk, chunk
    try:
        control, _ = scan_image(docker_client, build_tag, needles)
        assert any("/etc/dlenv-build/ca.crt" in f.where for f in control), control
    finally:
        docker_client.images.remove(build_tag, noprune=True)  # untag only: keep the layer cache
    print(f"scanned {layers} runtime layers for {len(needles)} private certificate(s): none found")


def test_ctrl_c_stops_an_mpi_run_across_containers(docker_client, dlenv_path, tmp_path):
    import os
    import signal
    import subprocess
    import time

    ws = tmp_path / "ws"
    ws.mkdir()
    ws.chmod(0o777)
    label = {"label": "org.dlenv.role=run"}
    proc = subprocess.Popen([dlenv_path, "run", "chainermn", "-n", "2", "--nodes", "2", "--", "python", "-c",
                             "import time; print('started', flush=True); time.sleep(600)"],
                            cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, NO_COLOR="1"))
    assert proc.stdout.readline().strip() == "started"
    assert len(docker_client.containers.list(filters=label)) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and docker_client.containers.list(all=True, filters=label):
        time.sleep(0.3)
    assert not docker_client.containers.list(all=True, filters=label)
    assert not docker_client.networks.list(filters=label)


def test_a_users_project_extending_chainermn(docker_client, run_dlenv, tmp_path):
    """The README's worked example: a repository with train.py and a dlenv.yaml extending chainermn,
    built with `dlenv build`, verified, and run with `dlenv run . -n 2` from its folder."""
    import shutil
    from pathlib import Path

    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "projects" / "chainermn-project", repo)
    repo.chmod(0o777)  # the image's user writes here when the host user is root
    for image in docker_client.images.list(name="dlenv/chainermn-project"):
        for tag in image.tags:
            docker_client.images.remove(tag)  # a real build, not a no-op from an earlier run
    lock_before = (repo / "dlenv.lock").read_bytes()
    # Another stack on the same base, built with --no-cache in between, must not cost the project its
    # parent: it builds on chainermn's promoted image, not on whatever the layer cache still holds.
    other = run_dlenv("build", "python", "--no-cache", "--no-verify", timeout=1800)
    assert other.returncode == 0, other.stderr[-3000:]
    chainermn = json.loads(run_dlenv("show", "chainermn", "--json", check=True).stdout)["image"]
    built = run_dlenv("build", cwd=repo, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "checks passed" in built.stdout
    assert f"builds on {chainermn} (found in the engine)" in built.stderr
    steps = [line for line in built.stderr.splitlines() if line.startswith("step ")]
    assert any(s.endswith(f"FROM {chainermn} AS runtime") for s in steps), steps
    # nothing of chainermn's build stage runs again: no Debian source, no compiler, no CUDA wheels
    assert not [s for s in steps if any(w in s for w in ("apt-get source", "/configure", "make -j", "nvidia-"))], steps
    # A colleague's fresh clone: the committed dlenv.lock is used as it is, not rewritten.
    assert (repo / "dlenv.lock").read_bytes() == lock_before and "wrote" not in built.stderr
    verified = run_dlenv("verify", "--json", cwd=repo, timeout=600)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["passed"]
    assert {"the project's extra package is installed", "ChainerMN trains with 2 ranks",
            "the build-time commands ran", "installed packages are the locked versions"} <= {
        c["name"] for c in report["checks"] if c["status"] == "passed"}
    ran = run_dlenv("run", ".", "-n", "2", "--", "python", "train.py", cwd=repo, timeout=600)
    assert ran.returncode == 0, ran.stderr
    line = ran.stdout.strip().splitlines()[-1]
    assert line.startswith("ranks=2 accuracy=") and float(line.split("=")[-1]) > 0.8
    show = json.loads(run_dlenv("show", "--json", cwd=repo, check=True).stdout)
    try:
        (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# changed\n")
        changed = json.loads(run_dlenv("show", "--json", cwd=repo, check=True).stdout)
        assert changed["content_hash"] != show["content_hash"]  # copied files are part of the hash
    finally:
        for image in docker_client.images.list(name="dlenv/chainermn-project"):
            for tag in image.tags:
                docker_client.images.remove(tag)
