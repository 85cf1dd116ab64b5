"""Exports against the real engine.

- The devcontainer is used for real: a container starts from the image it names, with exactly the
  runArgs it declares (through the docker CLI, as the devcontainer CLI does), its workspace mount,
  and commands run as its remoteUser.
- `dlenv save` / `dlenv load` round trip a small stack's image (tags removed, then restored, same
  image id, label checked), and archives whose manifest does not match, or that are cut short,
  move no tag.
- The MPIJob's worker (sshd) and launcher (mpirun) commands, taken from the generated YAML with its
  security context, run a 4-rank mpi4py job across two worker containers (needs the promoted
  chainermn image, which tests/e2e builds; skipped without it).

Everything made here is named `dlenv-itest-export-*` and removed at the end.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
from pathlib import Path

import docker.errors
import pytest
import yaml

from builder.engine.images import promoted_image
from builder.names import HASH_LABEL
from builder.outputs.exports.common import shm_bytes
from builder.outputs.exports.manifest import MANIFEST_NAME, read_manifest
from builder.outputs.exports.mpijob import mpijob
from builder.plan.plan import plan

TOKEN = secrets.token_hex(4)
STACK = f"dlenv-itest-export-{TOKEN}"
REPO = f"dlenv/{STACK}"
ROLE_LABEL = "org.dlenv.role"
ROLE = f"itest-export-{TOKEN}"


# The real CLI in a subprocess. Until cli.py registers export/save/load, this bootstrap adds them
# (a no-op once registered), so the subprocess runs exactly what `dlenv` will run.
_BOOT = ("import sys; from builder.cli.app import main; from builder.cli.export import export, save, load\n"
         "for c in (export, save, load):\n"
         "    if c.name not in main.commands: main.add_command(c)\n"
         "main(prog_name='dlenv')")


def _env(state: Path) -> dict:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", DLENV_STATE_DIR=str(state),
               XDG_CONFIG_HOME=str(state / "config"))
    for name in ("DLENV_REGISTRY", "DLENV_SHM_SIZE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def built(docker_client, tmp_path_factory):
    """A tiny stack (extends python, one unique env value), built once; its repository is removed after."""
    folder = tmp_path_factory.mktemp("export-stack")
    path = folder / f"{STACK}.yaml"
    path.write_text(textwrap.dedent(f"""\
        schema: 1
        name: {STACK}
        extends: python
        env:
          EXPORT_TOKEN: "{TOKEN}"
    """))
    state = folder / "state"

    def dlenv(*args, cwd=None, check=True, timeout=1800):
        proc = subprocess.run([sys.executable, "-c", _BOOT, *map(str, args)], capture_output=True, text=True, env=_env(state),
                              cwd=cwd, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"dlenv {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    try:
        dlenv("build", path, "--no-verify", "--no-pull")
        p = plan(str(path))
        attrs = promoted_image(docker_client, p)
        assert attrs is not None
        yield {"path": path, "plan": p, "image_id": attrs["Id"], "dlenv": dlenv}
    finally:
        _remove_repo(docker_client)
        for c in docker_client.containers.list(all=True, filters={"label": f"{ROLE_LABEL}={ROLE}"}):
            c.remove(force=True)


def _remove_repo(client) -> None:
    for image in client.images.list(name=REPO):
        for tag in image.tags:
            try:
                client.images.remove(tag)
            except docker.errors.APIError:
                pass


def _image_id(client, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


def _docker_cli() -> str:
    cli = shutil.which("docker")
    if cli is None:
        pytest.fail("the devcontainer test runs the docker CLI as the devcontainer CLI does, and none is on PATH")
    return cli


# ------------------------------------------------------------------------------------ devcontainer

def test_devcontainer_runs_with_exactly_its_run_args(docker_client, built, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(project, 0o777)  # tests run as root; the image's user (uid 1000) writes here
    (project / "from-host.txt").write_text("hello from the host\n")
    built["dlenv"]("export", "devcontainer", built["path"], "-o", project)
    config = json.loads((project / ".devcontainer" / "devcontainer.json").read_text())
    p = built["plan"]
    assert config["image"] == p.hash_tag
    labels = docker_client.api.inspect_image(config["image"])["Config"]["Labels"]
    assert labels[HASH_LABEL] == p.content_hash

    # What the devcontainer CLI does for an image-based config: docker run with the workspace mount,
    # the config's runArgs, a keep-alive entrypoint; then every command runs as remoteUser.
    mount = config["workspaceMount"].replace("${localWorkspaceFolder}", str(project))
    run_args = list(config["runArgs"])
    name = f"dlenv-itest-export-devc-{TOKEN}"

    def start(args):
        return subprocess.run(
            [_docker_cli(), "run", "-d", "--name", name, "--label", f"{ROLE_LABEL}={ROLE}", "--mount", mount,
             *args, "--entrypoint", "/bin/sh", config["image"], "-c",
             "echo Container started; trap 'exit 0' 15; while sleep 1 & wait $!; do :; done"],
            capture_output=True, text=True, timeout=120)

    dropped = []
    try:
        proc = start(run_args)
        if proc.returncode != 0 and "error setting rlimit" in proc.stderr and "memlock=-1" in run_args:
            # This sandbox's engine may not raise RLIMIT_MEMLOCK (dlenv run drops it the same way).
            subprocess.run([_docker_cli(), "rm", "-f", name], capture_output=True)
            i = run_args.index("memlock=-1")
            dropped = run_args[i - 1:i + 1]
            del run_args[i - 1:i + 1]
            warnings.warn(f"this engine refuses --ulimit memlock=-1; the devcontainer ran without it: {dropped}")
            proc = start(run_args)
        assert proc.returncode == 0, proc.stderr

        def as_remote_user(script: str) -> str:
            out = subprocess.run([_docker_cli(), "exec", "-u", config["remoteUser"], "-w", config["workspaceFolder"],
                                  name, "bash", "-c", script], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout

        assert as_remote_user("id -un").strip() == "dlenv"
        df = as_remote_user("df -h /dev/shm").splitlines()
        assert df[1].split()[1] == "8.0G", df          # --shm-size=8g
        assert as_remote_user("df -B1 --output=size /dev/shm | tail -n 1").strip() == str(shm_bytes("8g"))
        assert as_remote_user("ulimit -s").strip() == "65536"          # --ulimit stack=67108864 (bytes)
        if not dropped:
            assert as_remote_user("ulimit -l").strip() == "unlimited"
        assert as_remote_user("cat /proc/1/comm").strip() == "docker-init"   # --init
        assert as_remote_user("pwd").strip() == "/workspace"
        assert as_remote_user("cat from-host.txt && echo made > from-container.txt") == "hello from the host\n"
        assert (project / "from-container.txt").read_text() == "made\n"
        assert as_remote_user("printenv EXPORT_TOKEN").strip() == TOKEN
    finally:
        subprocess.run([_docker_cli(), "rm", "-f", name], capture_output=True)
    assert not docker_client.containers.list(all=True, filters={"name": name})


# --------------------------------------------------------------------------------------- save/load

def test_save_load_round_trip(docker_client, built, tmp_path):
    p, image_id = built["plan"], built["image_id"]
    archive = tmp_path / "stack.tar.gz"
    out = built["dlenv"]("save", built["path"], "-o", archive).stdout
    assert f"saved {p.hash_tag}" in out and archive.read_bytes()[:2] == b"\x1f\x8b"
    assert not list(tmp_path.glob("*.partial"))
    manifest = read_manifest(archive)
    assert manifest["content_hash"] == p.content_hash and manifest["image_id"] == image_id
    assert manifest["stack"] == STACK and manifest["versions"] == {"python": "3.11"}

    for ref in (p.hash_tag, p.latest_tag):
        docker_client.images.remove(ref)
    assert _image_id(docker_client, image_id) is None          # the last tag went: the image is gone

    out = built["dlenv"]("load", archive).stdout
    assert f"loaded {p.hash_tag} and {p.latest_tag}" in out
    assert _image_id(docker_client, p.hash_tag) == image_id
    assert _image_id(docker_client, p.latest_tag) == image_id
    assert docker_client.api.inspect_image(p.hash_tag)["Config"]["Labels"][HASH_LABEL] == p.content_hash
    # Loading again is harmless and says the engine had it.
    assert "already had it" in built["dlenv"]("load", archive).stdout


def test_ctrl_c_during_save_leaves_no_file(built, tmp_path):
    """A real SIGINT to a real `dlenv save`: exit 130, neither FILE nor FILE.partial left."""
    archive = tmp_path / "stack.tar.gz"
    partial = tmp_path / "stack.tar.gz.partial"
    proc = subprocess.Popen([sys.executable, "-c", _BOOT, "save", str(built["path"]), "-o", str(archive)],
                            env=_env(tmp_path / "state"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 1 << 20):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the save never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert not archive.exists() and not partial.exists()


def _rewrite(src: Path, dst: Path, *, manifest_changes: dict | None = None, cut_at: int | None = None) -> Path:
    if cut_at is not None:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fout.write(fin.read(cut_at))
        return dst
    with tarfile.open(src, "r|") as tin, tarfile.open(dst, "w|", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            data = tin.extractfile(member) if member.isreg() else None
            if member.name == MANIFEST_NAME:
                manifest = json.loads(data.read())
                manifest.update(manifest_changes or {})
                body = json.dumps(manifest).encode()
                member.size = len(body)
                data = io.BytesIO(body)
            tout.addfile(member, data)
    return dst


def test_load_of_a_mismatched_or_broken_archive_moves_no_tag(docker_client, built, tmp_path):
    p, image_id = built["plan"], built["image_id"]
    archive = tmp_path / "stack.tar"
    built["dlenv"]("save", built["path"], "-o", archive)
    other_hash = "0" * 64
    cases = {
        "hash": (_rewrite(archive, tmp_path / "hash.tar", manifest_changes={"content_hash": other_hash}),
                 "content-hash label"),
        "id": (_rewrite(archive, tmp_path / "id.tar", manifest_changes={"image_id": "sha256:" + "1" * 64}),
               "the manifest says sha256:11111111"),
        "cut": (_rewrite(archive, tmp_path / "cut.tar", cut_at=archive.stat().st_size // 2), "the engine refused"),
    }
    for case, (path, message) in cases.items():
        docker_client.api.remove_image(p.latest_tag, noprune=True)   # the hash tag keeps the image
        proc = built["dlenv"]("load", path, check=False)
        assert proc.returncode == 1, (case, proc.stdout, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("dlenv: error: "), (case, proc.stderr)
        assert message in proc.stderr, (case, proc.stderr)
        assert _image_id(docker_client, p.latest_tag) is None, case             # no tag moved
        assert _image_id(docker_client, f"{REPO}:{other_hash[:16]}") is None, case
        assert _image_id(docker_client, p.hash_tag) == image_id, case
        docker_client.api.tag(image_id, REPO, "latest")
    proc = built["dlenv"]("load", archive)                    # the genuine archive still loads
    assert _image_id(docker_client, p.latest_tag) == image_id


# ------------------------------------------------------------------------------------------ mpijob

MPI_CODE = ("from mpi4py import MPI; import os, socket; c = MPI.COMM_WORLD; "
            "v = c.allreduce(c.rank + 1); "
            "print('rank', c.rank, 'size', c.size, 'uid', os.getuid(), 'host', socket.gethostname(), 'sum', v)")


def test_mpijob_commands_run_across_two_workers(docker_client, tmp_path):
    p = plan("chainermn")
    if promoted_image(docker_client, p) is None:
        pytest.skip(f"needs the promoted chainermn image {p.hash_tag} (tests/e2e builds it)")
    doc = yaml.safe_load(mpijob(p, ["python", "-c", MPI_CODE], registry="127.0.0.1:5000", workers=2,
                                   gpus_per_worker=0, slots_per_worker=2, name=f"itest-{TOKEN}"))
    spec = doc["spec"]
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    replicas = spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    image = p.hash_tag   # the same content hash as the registry reference in the YAML
    assert launcher["containers"][0]["image"].endswith(image.split("/", 1)[1])

    def kwargs(pod: dict) -> dict:
        sc, (container,) = pod["securityContext"], pod["containers"]
        csc = container["securityContext"]
        out = {"user": f"{sc['runAsUser']}:{sc['runAsGroup']}", "working_dir": container["workingDir"],
               "labels": {ROLE_LABEL: ROLE}, "network": network.name, "detach": True,
               "cap_drop": csc["capabilities"]["drop"],
               "security_opt": [] if csc["allowPrivilegeEscalation"] else ["no-new-privileges"]}
        for volume in pod.get("volumes", []):
            if volume["emptyDir"].get("medium") == "Memory":
                out["shm_size"] = shm_bytes(volume["emptyDir"]["sizeLimit"].replace("Gi", "g").replace("Mi", "m"))
        return out

    # What mpi-operator provides: the job's key pair mounted at sshAuthMountPath (root-owned, mode
    # 0644 for a non-root path), a hostfile with one line per worker, and the launcher's OMPI_MCA_* env.
    keys, config = tmp_path / "ssh", tmp_path / "mpi"
    keys.mkdir()
    config.mkdir()
    docker_client.containers.run(image, ["bash", "-c", "ssh-keygen -q -t ecdsa -N '' -f /k/id_rsa && "
                                         "cp /k/id_rsa.pub /k/authorized_keys && chmod 644 /k/*"],
                                 user="0:0", volumes={str(keys): {"bind": "/k", "mode": "rw"}}, remove=True,
                                 labels={ROLE_LABEL: ROLE})
    names = [f"dlenv-itest-export-{TOKEN}-worker-{i}" for i in range(replicas)]
    (config / "hostfile").write_text("".join(f"{n} slots={spec['slotsPerWorker']}\n" for n in names))
    ssh_mount = {str(keys): {"bind": spec["sshAuthMountPath"], "mode": "ro"}}
    network = docker_client.networks.create(f"dlenv-itest-export-{TOKEN}", labels={ROLE_LABEL: ROLE})
    containers = []
    try:
        for n in names:
            containers.append(docker_client.containers.run(
                image, worker["containers"][0]["command"], name=n, hostname=n, volumes=ssh_mount, **kwargs(worker)))
        env = {"OMPI_MCA_orte_keep_fqdn_hostnames": "true", "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
               "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10", "K_MPI_JOB_ROLE": "launcher"}
        runner = docker_client.containers.run(
            image, launcher["containers"][0]["command"], name=f"dlenv-itest-export-{TOKEN}-launcher",
            environment=env, volumes={**ssh_mount, str(config): {"bind": "/etc/mpi", "mode": "ro"}}, **kwargs(launcher))
        containers.append(runner)
        status = runner.wait(timeout=180)
        logs = runner.logs().decode()
        assert status["StatusCode"] == 0, logs + "".join(c.logs().decode()[-500:] for c in containers[:-1])
        rows = sorted(line.split() for line in logs.splitlines() if line.startswith("rank "))
        assert [r[1] for r in rows] == ["0", "1", "2", "3"], logs
        assert {r[3] for r in rows} == {"4"} and {r[5] for r in rows} == {"1000"}, logs
        assert {r[7] for r in rows} == set(names), logs            # ranks on both workers, none on the launcher
        assert {r[9] for r in rows} == {"10"}, logs                 # allreduce of 1+2+3+4
    finally:
        for c in containers:
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        network.remove()
