"""Exports (no engine): golden files, the documents parsed and checked field by field, the sbatch
scripts run for real against stub `srun`/`apptainer`/`mpirun`, option validation, the CLI through
CliRunner, and save/load against a fake engine (streaming, Ctrl-C, manifest checks).

Golden files live in tests/golden/exports/ and are regenerated on purpose with
`python scripts/regen-export-golden.py`. Every export names the image by the stack's content hash,
so they change whenever the hash of `chainermn` or `python` changes, not only with the templates.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder import __version__
from builder.cli.app import main
from builder.cli.export import export, load, save
from builder.engine.archive import load_image, save_image
from builder.errors import ArchiveError, DlenvError, EngineError, ExportError, RegistryError
from builder.names import HASH_LABEL
from builder.outputs.exports import apptainer
from builder.outputs.exports.apptainer import apptainer_def
from builder.outputs.exports.common import EXPORT_KINDS
from builder.outputs.exports.devcontainer import devcontainer
from builder.outputs.exports.manifest import MANIFEST_NAME, read_manifest
from builder.outputs.exports.mpijob import mpijob
from builder.outputs.exports.slurm import _rank_script, slurm_script
from builder.plan.plan import plan

from dlenv_unit import CLI_ENV, ROOT

# Until cli.py registers them, the commands are added here (a no-op once they are registered).
for _command in (export, save, load):
    if _command.name not in main.commands:
        main.add_command(_command)

GOLDEN = ROOT / "tests" / "golden" / "exports"
REGEN = "python scripts/regen-export-golden.py"


def _load_regen():
    spec = importlib.util.spec_from_file_location("regen_export_golden", ROOT / "scripts" / "regen-export-golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGEN_MODULE = _load_regen()
CASES = REGEN_MODULE.CASES
REGISTRY = REGEN_MODULE.REGISTRY
COMMAND = REGEN_MODULE.COMMAND


@pytest.fixture(scope="module")
def mn():
    return plan("chainermn")


@pytest.fixture(scope="module")
def py():
    return plan("python")


# ------------------------------------------------------------------------------------------ golden

def test_every_golden_file_has_a_case_and_back():
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES), f"run `{REGEN}`"


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_matches_golden(name):
    expected = (GOLDEN / name).read_text()
    assert CASES[name]() == expected, (
        f"tests/golden/exports/{name} differs from the export. The golden files hold the content hash, so a "
        f"change to the stack's hash changes them too; if the difference is intended, run `{REGEN}` and commit "
        "the regenerated files on their own, explaining the difference")


@pytest.mark.parametrize("name", sorted(CASES))
def test_exports_are_deterministic_and_end_with_one_newline(name):
    first, second = CASES[name](), CASES[name]()
    assert first == second
    assert first.endswith("\n") and not first.endswith("\n\n")


# --------------------------------------------------------------------------------------- apptainer

def deffile(text: str) -> tuple[dict, dict]:
    """(header keywords, section name -> body) of an Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m[1]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, {k: textwrap.dedent("\n".join(v)).strip("\n") + "\n" for k, v in sections.items()}


def test_apptainer_local_engine(mn):
    header, sections = deffile(apptainer_def(mn))
    assert header == {"Bootstrap": "docker-daemon", "From": f"dlenv/chainermn:{mn.content_hash[:16]}"}
    assert set(sections) == {"labels", "help", "environment", "runscript", "test"}
    labels = dict(line.split(None, 1) for line in sections["labels"].splitlines())
    assert labels == {HASH_LABEL: mn.content_hash, "org.dlenv.stack": "chainermn"}


def test_apptainer_registry(mn):
    header, _ = deffile(apptainer_def(mn, REGISTRY))
    assert header == {"Bootstrap": "docker", "From": f"{REGISTRY}/dlenv/chainermn:{mn.content_hash[:16]}"}


def test_apptainer_refuses_a_registry_that_is_not_a_host(mn):
    with pytest.raises(RegistryError, match="does not name a registry host"):
        apptainer_def(mn, "team")


def _bash(script: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script, "bash", *args], capture_output=True, text=True,
                          env=env or {"PATH": "/usr/bin:/bin"}, timeout=30)


def test_apptainer_environment_section_exports_path_loader_path_and_stack_env(mn):
    _, sections = deffile(apptainer_def(mn))
    script = sections["environment"] + 'printf "%s\\n" "$PATH" "$LD_LIBRARY_PATH" "$CHAINERMN_FORCE_ABORT_ON_EXCEPTION"'
    out = _bash(script, env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/.singularity.d/libs"})
    assert out.returncode == 0, out.stderr
    path, ld, abort = out.stdout.splitlines()
    assert path == mn.resolved.path and path.startswith("/opt/openmpi/bin:/opt/ucx/bin:/opt/venv/bin:")
    assert ld.split(":") == mn.resolved.ld_paths + ["/.singularity.d/libs"]   # what was set is kept
    assert "/opt/nvidia/cudnn/nvidia/cudnn/lib" in ld and "/opt/openmpi/lib" in ld
    assert abort == "1"
    # Without a previous LD_LIBRARY_PATH there is no empty (= current directory) entry.
    out = _bash(sections["environment"] + 'printf "%s" "$LD_LIBRARY_PATH"')
    assert out.stdout == ":".join(mn.resolved.ld_paths)


def test_apptainer_environment_keeps_hostile_values_literal(tmp_path):
    stack = tmp_path / "quoting.yaml"
    stack.write_text(textwrap.dedent("""\
        schema: 1
        name: quoting
        extends: python
        env:
          GREETING: "hello $USER \\"quoted\\" `id` $(touch pwned) 'single'"
    """))
    _, sections = deffile(apptainer_def(plan(str(stack))))
    out = subprocess.run(["bash", "-c", sections["environment"] + 'printf "%s" "$GREETING"'], cwd=tmp_path,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "USER": "x"})
    assert out.stdout == "hello $USER \"quoted\" `id` $(touch pwned) 'single'"
    assert not (tmp_path / "pwned").exists()


def test_apptainer_runscript_execs_its_arguments(mn):
    _, sections = deffile(apptainer_def(mn))
    out = _bash(sections["runscript"], "printf", "%s|", "a b", "$HOME")
    assert out.returncode == 0 and out.stdout == "a b|$HOME|"


def test_apptainer_test_imports_the_stacks_modules_without_device_checks(mn, py):
    _, sections = deffile(apptainer_def(mn))
    words = shlex.split(sections["test"])
    assert words[:2] == ["python", "-c"] and len(words) == 3
    modules = [m.strip() for m in words[2].removeprefix("import ").split(",")]
    assert modules == apptainer.test_modules(mn)
    assert {"chainer", "chainermn", "cupy", "mpi4py"} <= set(modules)
    assert "arange" not in sections["test"]          # the CuPy kernel check needs a GPU: not in %test
    _, sections = deffile(apptainer_def(py))
    assert sections["test"].strip() == "python --version"   # python checks nothing importable


# ------------------------------------------------------------------------------------------- slurm

def sbatch_options(text: str) -> dict:
    """#SBATCH options as sbatch reads them: only before the first command line."""
    options = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            options[key] = value
        elif line.strip() and not line.startswith("#"):
            break
    return options


def test_slurm_sbatch_options(mn):
    text = slurm_script(mn, COMMAND, nodes=2, gpus_per_node=4, time_limit="01:00:00", partition="gpu")
    assert text.startswith("#!/bin/bash\n")
    assert sbatch_options(text) == {"--job-name": "dlenv-chainermn", "--nodes": "2", "--ntasks-per-node": "4",
                                    "--gpus-per-node": "4", "--time": "01:00:00", "--partition": "gpu"}
    assert f"{mn.content_hash}" in text and "srun --kill-on-bad-exit=1 --mpi=pmix apptainer exec --nv" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_slurm_cpu_only_and_explicit_tasks(mn):
    text = slurm_script(mn, ["python", "x.py"], nodes=3, gpus_per_node=0, ntasks_per_node=2)
    # No --time given: every srun still gets a deadline, the default time limit.
    assert sbatch_options(text) == {"--job-name": "dlenv-chainermn", "--nodes": "3", "--ntasks-per-node": "2",
                                    "--time": "01:00:00"}
    assert "--nv" not in text


STUB = """#!/bin/sh
python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
    "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES")}))' "$(basename "$0")" "$@"
"""


def run_sbatch(tmp_path: Path, text: str, files=(), env=None) -> subprocess.CompletedProcess:
    """Run a generated sbatch script for real, with stub srun/apptainer/mpirun that print argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "apptainer", "mpirun"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "submit dir"
    work.mkdir(exist_ok=True)
    for name in files:
        (work / name).write_text("")
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NTASKS": "8", **(env or {})}
    return subprocess.run(["bash", str(script)], cwd=work, capture_output=True, text=True, env=full_env, timeout=30)


HOSTILE = ["python", "train.py", "--name", "a b", "$(touch pwned)", "`touch pwned2`", "x;touch pwned3",
           "it's", 'say "hi"', "line\nbreak", "$HOME", "*"]


def test_slurm_apptainer_runs_the_command_word_for_word(mn, tmp_path):
    sif = f"dlenv-chainermn-{mn.content_hash[:16]}.sif"
    proc = run_sbatch(tmp_path, slurm_script(mn, HOSTILE, nodes=2, gpus_per_node=4), files=[sif])
    assert proc.returncode == 0, proc.stderr
    call = json.loads(proc.stdout)
    work = str(tmp_path / "submit dir")
    assert call["argv"] == ["srun", "--kill-on-bad-exit=1", "--mpi=pmix", "apptainer", "exec", "--nv", "--bind",
                            f"{work}:/workspace",
                            "--pwd", "/workspace", sif, *HOSTILE]
    assert not list((tmp_path / "submit dir").glob("pwned*"))


def test_slurm_apptainer_stops_when_the_sif_is_missing(mn, tmp_path):
    proc = run_sbatch(tmp_path, slurm_script(mn, COMMAND, nodes=1, gpus_per_node=1))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "not found" in proc.stderr and ".sif" in proc.stderr


def test_slurm_hybrid_uses_the_hosts_mpirun(mn, tmp_path):
    text = slurm_script(mn, COMMAND, nodes=2, gpus_per_node=4, mpi_mode="hybrid", image_file="/shared/img.sif")
    proc = run_sbatch(tmp_path, text, env={"SLURM_NTASKS": "8"})
    assert proc.returncode == 1 and "/shared/img.sif not found" in proc.stderr
    Path(tmp_path / "submit dir").mkdir(exist_ok=True)
    text = slurm_script(mn, COMMAND, nodes=2, gpus_per_node=4, mpi_mode="hybrid", image_file="img.sif")
    proc = run_sbatch(tmp_path, text, files=["img.sif"])
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout)["argv"]
    assert argv[:5] == ["mpirun", "-np", "8", "apptainer", "exec"] and argv[-len(COMMAND):] == COMMAND
    assert "srun" not in text.split("set -euo pipefail")[1]


def test_slurm_pyxis_registry(mn, tmp_path):
    text = slurm_script(mn, HOSTILE, nodes=4, gpus_per_node=8, runtime="pyxis", registry=REGISTRY)
    proc = run_sbatch(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(proc.stdout)
    work = str(tmp_path / "submit dir")
    assert call["argv"] == ["srun", "--kill-on-bad-exit=1", "--mpi=pmix",
                            f"--container-image=registry.example.org:5000#team/dlenv/chainermn:{mn.content_hash[:16]}",
                            f"--container-mounts={work}:/workspace", "--container-workdir=/workspace", *HOSTILE]
    assert call["nvidia"] == "all"
    assert sbatch_options(text)["--ntasks-per-node"] == "8"


def test_slurm_pyxis_without_registry_uses_a_squashfs_file(mn, tmp_path):
    sqsh = f"dlenv-chainermn-{mn.content_hash[:16]}.sqsh"
    text = slurm_script(mn, COMMAND, nodes=1, gpus_per_node=0, runtime="pyxis")
    assert f"enroot import -o ./{sqsh} dockerd://dlenv/chainermn:{mn.content_hash[:16]}" in text
    proc = run_sbatch(tmp_path, text, files=[sqsh])
    assert proc.returncode == 0, proc.stderr
    call = json.loads(proc.stdout)
    assert call["argv"][3] == f"--container-image=./{sqsh}" and call["nvidia"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": 0}, "--nodes must be an integer >= 1"),
    ({"gpus_per_node": -1}, "--gpus-per-node must be an integer >= 0"),
    ({"ntasks_per_node": 0}, "--ntasks-per-node must be an integer >= 1"),
    ({"time_limit": "1h"}, "--time '1h' is not a time limit"),
    ({"time_limit": "01:60:00"}, "is not a time limit"),
    ({"partition": "gpu;reboot"}, "is not a partition name"),
    ({"partition": "gpu,"}, "is not a partition name"),
    ({"job_name": "a b"}, "is not a job name"),
    ({"runtime": "docker"}, "--runtime must be one of"),
    ({"mpi": "pmi"}, "--mpi must be one of"),
    ({"mpi": "pmi2"}, "has no PMI-2 client"),
    ({"mpi_mode": "hybrid", "runtime": "pyxis"}, "--mpi-mode hybrid needs --runtime apptainer"),
])
def test_slurm_validation(mn, kwargs, message):
    args = {"nodes": 2, "gpus_per_node": 4, **kwargs}
    with pytest.raises(ExportError) as info:
        slurm_script(mn, COMMAND, **args)
    assert message in info.value.one_line() and "\n" not in info.value.one_line()


def test_slurm_accepts_day_time_limits_and_partition_lists(mn):
    text = slurm_script(mn, COMMAND, nodes=1, gpus_per_node=1, time_limit="2-12:00:00", partition="a100,h100")
    assert sbatch_options(text)["--time"] == "2-12:00:00" and sbatch_options(text)["--partition"] == "a100,h100"


def test_slurm_needs_a_command(mn):
    with pytest.raises(ExportError, match="no command given"):
        slurm_script(mn, [], nodes=1, gpus_per_node=1)


def test_slurm_pmi2_is_allowed_for_a_stack_without_open_mpi(py):
    text = slurm_script(py, ["python", "x.py"], nodes=1, gpus_per_node=0, mpi="pmi2")
    assert "srun --kill-on-bad-exit=1 --mpi=pmi2" in text and "This stack has no MPI" in text
    with pytest.raises(ExportError, match="has no Open MPI"):
        slurm_script(py, ["python", "x.py"], nodes=1, gpus_per_node=0, mpi_mode="hybrid")


# ------------------------------------------------------------------------------------------ mpijob

def test_mpijob_document(mn):
    text = mpijob(mn, COMMAND, registry=REGISTRY, workers=3, gpus_per_worker=4)
    assert "&id" not in text and "*id" not in text                    # no YAML anchors
    doc = yaml.safe_load(text)
    image = f"{REGISTRY}/dlenv/chainermn:{mn.content_hash[:16]}"
    assert doc["apiVersion"] == "kubeflow.org/v2beta1" and doc["kind"] == "MPIJob"
    assert doc["metadata"]["name"] == "dlenv-chainermn"
    assert doc["metadata"]["labels"]["org.dlenv/content-hash"] == mn.content_hash[:16]
    assert doc["metadata"]["annotations"]["org.dlenv/content-hash"] == mn.content_hash
    spec = doc["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running"}
    assert spec["sshAuthMountPath"] == "/home/dlenv/.ssh"
    assert spec["mpiImplementation"] == "OpenMPI"
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and worker["replicas"] == 3
    for replica in (launcher, worker):
        pod = replica["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsGroup"] == 1000
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"] == image
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        for key, value in replica["template"]["metadata"]["labels"].items():
            assert len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value), (key, value)
    command = launcher["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["mpirun", "-np", "12"] and command[-len(COMMAND):] == COMMAND
    assert "--allow-run-as-root" not in text and "OMPI_ALLOW_RUN_AS_ROOT" not in text
    assert "resources" not in launcher["template"]["spec"]["containers"][0]
    wpod = worker["template"]["spec"]
    (wc,) = wpod["containers"]
    assert wc["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    assert wc["command"][0] == "/usr/sbin/sshd" and "HostKey=/home/dlenv/.ssh/id_rsa" in wc["command"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in wc["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in wpod["volumes"]


def test_mpijob_slots_cpu_only_and_shm_size(mn):
    doc = yaml.safe_load(mpijob(mn, COMMAND, registry=REGISTRY, workers=2, gpus_per_worker=0,
                                   slots_per_worker=3, shm_size="512m", name="my-job"))
    assert doc["metadata"]["name"] == "my-job" and doc["spec"]["slotsPerWorker"] == 3
    worker = doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert "resources" not in worker["containers"][0]
    assert worker["volumes"][0]["emptyDir"]["sizeLimit"] == "512Mi"
    assert doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"][2] == "6"


def test_mpijob_needs_a_registry(mn):
    with pytest.raises(ExportError) as info:
        mpijob(mn, COMMAND, registry=None, workers=2, gpus_per_worker=1)
    line = info.value.one_line()
    assert "needs a registry" in line and "--registry" in line and "dlenv push chainermn" in line


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, "--workers must be an integer >= 1"),
    ({"gpus_per_worker": -2}, "--gpus-per-worker must be an integer >= 0"),
    ({"slots_per_worker": 0}, "--slots-per-worker must be an integer >= 1"),
    ({"name": "My_Job"}, "is not a Kubernetes object name"),
    ({"shm_size": "lots"}, "shm size 'lots'"),
])
def test_mpijob_validation(mn, kwargs, message):
    args = {"registry": REGISTRY, "workers": 2, "gpus_per_worker": 1, **kwargs}
    with pytest.raises(ExportError, match=re.escape(message)):
        mpijob(mn, COMMAND, **args)


def test_mpijob_needs_open_mpi(py):
    with pytest.raises(ExportError, match="has no Open MPI"):
        mpijob(py, COMMAND, registry=REGISTRY, workers=2, gpus_per_worker=0)


# ------------------------------------------------------------------------------------ devcontainer

def test_devcontainer_python(py):
    doc = json.loads(devcontainer(py))
    assert doc["image"] == f"dlenv/python:{py.content_hash[:16]}"
    assert doc["remoteUser"] == "dlenv" and "containerUser" not in doc
    assert doc["workspaceFolder"] == "/workspace"
    assert doc["workspaceMount"] == "source=${localWorkspaceFolder},target=/workspace,type=bind"
    assert doc["runArgs"] == ["--shm-size=8g", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864", "--init"]
    assert "hostRequirements" not in doc
    assert doc["customizations"] == {"vscode": {"extensions": ["ms-python.python"]}}


def test_devcontainer_gpu_stack_and_registry(mn):
    doc = json.loads(devcontainer(mn, registry="127.0.0.1:5000", shm_size="16g"))
    assert doc["image"] == f"127.0.0.1:5000/dlenv/chainermn:{mn.content_hash[:16]}"
    assert doc["hostRequirements"] == {"gpu": "optional"}
    assert doc["runArgs"][0] == "--shm-size=16g"


# --------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """`dlenv ...` in-process, in an empty folder, with no user or project settings."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)

    def invoke(*args, env=None):
        full_env = dict(CLI_ENV, DLENV_STATE_DIR=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                        DLENV_REGISTRY=None, DLENV_SHM_SIZE=None)
        full_env.update(env or {})
        from importlib.metadata import version
        kwargs = {} if tuple(int(p) for p in version("click").split(".")[:2]) >= (8, 2) else {"mix_stderr": False}
        return CliRunner(**kwargs).invoke(main, [str(a) for a in args], env=full_env)

    invoke.cwd = folder
    return invoke


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def test_cli_help_lists_the_new_commands(run_cli):
    out = ok(run_cli("--help")).stdout
    for command in ("export", "save", "load"):
        assert re.search(rf"^\s+{command}\b", out, flags=re.M), command
    out = ok(run_cli("export", "--help")).stdout
    for kind in EXPORT_KINDS:
        assert re.search(rf"^\s+{kind}\b", out, flags=re.M), kind


def test_cli_apptainer_to_stdout_equals_the_golden_file(run_cli):
    result = ok(run_cli("export", "apptainer", "chainermn"))
    assert result.stdout == (GOLDEN / "chainermn.apptainer.def").read_text()
    assert result.stderr == ""


def test_cli_apptainer_takes_the_registry_setting_unless_local(run_cli):
    env = {"DLENV_REGISTRY": REGISTRY}
    assert ok(run_cli("export", "apptainer", "chainermn", env=env)).stdout == \
        (GOLDEN / "chainermn.apptainer-registry.def").read_text()
    assert ok(run_cli("export", "apptainer", "chainermn", "--local", env=env)).stdout == \
        (GOLDEN / "chainermn.apptainer.def").read_text()


def test_cli_slurm_matches_the_golden_file(run_cli):
    result = ok(run_cli("export", "slurm", "chainermn", "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00",
                        "--partition", "gpu", "--", *COMMAND))
    assert result.stdout == (GOLDEN / "chainermn.slurm-apptainer.sbatch").read_text()


def test_cli_slurm_bad_values_are_one_line_errors(run_cli):
    result = run_cli("export", "slurm", "chainermn", "--nodes", "0", "--gpus-per-node", "4", "--", "python", "x.py")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == "dlenv: error: --nodes must be an integer >= 1, not 0\n"
    result = run_cli("export", "slurm", "chainermn", "--nodes", "1", "--gpus-per-node", "1", "--mpi", "pmi2",
                     "--", "python", "x.py")
    assert result.exit_code == 1 and "PMI-2" in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_slurm_needs_a_command(run_cli):
    result = run_cli("export", "slurm", "chainermn", "--nodes", "1", "--gpus-per-node", "1")
    assert result.exit_code == 2 and "Missing argument 'COMMAND...'" in result.stderr


def test_cli_mpijob_without_a_registry_explains(run_cli):
    result = run_cli("export", "mpijob", "chainermn", "--workers", "2", "--gpus-per-worker", "4", "--", "python", "x.py")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("dlenv: error: an MPIJob needs a registry") and "--registry" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_cli_mpijob_from_the_environment_registry_matches_golden(run_cli):
    result = ok(run_cli("export", "mpijob", "chainermn", "--workers", "2", "--gpus-per-worker", "4", "--", *COMMAND,
                        env={"DLENV_REGISTRY": REGISTRY}))
    assert result.stdout == (GOLDEN / "chainermn.mpijob.yaml").read_text()


def test_cli_output_file_is_not_overwritten_without_force(run_cli):
    target = run_cli.cwd / "job.sbatch"
    args = ["export", "slurm", "chainermn", "--nodes", "2", "--gpus-per-node", "4", "-o", target]
    first = ok(run_cli(*args, "--", "python", "a.py"))
    assert first.stdout == "" and f"wrote {target}" in first.stderr
    text = target.read_text()
    assert shlex.split(text.rstrip().splitlines()[-1]) == ["python", "a.py"]
    again = ok(run_cli(*args, "--", "python", "a.py"))
    assert "up to date" in again.stderr and target.read_text() == text
    refused = run_cli(*args, "--", "python", "b.py")
    assert refused.exit_code == 1 and "exists and differs" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == text
    ok(run_cli(*args, "--force", "--", "python", "b.py"))
    assert target.read_text().rstrip().endswith("python b.py")
    assert not list(run_cli.cwd.glob("*.partial"))


def test_cli_devcontainer_default_path_folder_and_stdout(run_cli, py):
    ok(run_cli("export", "devcontainer", "python"))
    written = run_cli.cwd / ".devcontainer" / "devcontainer.json"
    assert written.read_text() == (GOLDEN / "python.devcontainer.json").read_text()
    project = run_cli.cwd / "project"
    ok(run_cli("export", "devcontainer", "chainermn", "-o", project))
    assert json.loads((project / ".devcontainer" / "devcontainer.json").read_text())["image"].startswith("dlenv/chainermn:")
    assert ok(run_cli("export", "devcontainer", "python", "-o", "-")).stdout == written.read_text()
    refused = run_cli("export", "devcontainer", "chainermn")          # a different stack, same file
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert written.read_text() == (GOLDEN / "python.devcontainer.json").read_text()
    ok(run_cli("export", "devcontainer", "chainermn", "--force"))
    assert json.loads(written.read_text())["hostRequirements"] == {"gpu": "optional"}


def test_cli_devcontainer_follows_the_shm_setting_not_the_registry_setting(run_cli):
    out = ok(run_cli("export", "devcontainer", "python", "-o", "-",
                     env={"DLENV_SHM_SIZE": "2g", "DLENV_REGISTRY": REGISTRY})).stdout
    doc = json.loads(out)
    assert doc["runArgs"][0] == "--shm-size=2g" and doc["image"].startswith("dlenv/python:")


def test_cli_unknown_stack(run_cli):
    result = run_cli("export", "apptainer", "chainr")
    assert result.exit_code == 1 and "did you mean 'chainer'?" in result.stderr


# --------------------------------------------------------------------------------- save/load (fake)

IMAGE_HEX = "ab" * 32
IMAGE_ID = f"sha256:{IMAGE_HEX}"


def engine_archive(image_hex: str = IMAGE_HEX, layer: bytes = b"layer bytes " * 5000) -> bytes:
    """A small stand-in for what `docker save <id>` streams."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("0123/layer.tar", layer)
        add(f"{image_hex}.json", b'{"config": {}}')
        add("manifest.json", json.dumps([{"Config": f"{image_hex}.json", "RepoTags": None,
                                          "Layers": ["0123/layer.tar"]}]).encode())
    return buf.getvalue()


class FakeAPI:
    def __init__(self, p, *, archive=None, interrupt_after=None, load_id=IMAGE_ID, labels=None, existing=()):
        self.plan = p
        self.archive = archive if archive is not None else engine_archive()
        self.interrupt_after = interrupt_after
        self.load_id = load_id
        self.labels = labels if labels is not None else {HASH_LABEL: p.content_hash, "org.dlenv.stack": p.resolved.name}
        self.tags: list = []
        self.removed: list = []
        self.loaded_bytes = 0
        self.existing = set(existing)
        self.known = {p.hash_tag: IMAGE_ID}

    def inspect_image(self, ref):
        import docker.errors
        image_id = self.known.get(ref, ref if ref == self.load_id and self.loaded_bytes else None)
        if image_id is None:
            raise docker.errors.ImageNotFound("no such image")
        return {"Id": image_id, "RepoTags": [], "Config": {"Labels": dict(self.labels)}}

    def get_image(self, image, chunk_size=None):
        assert image == IMAGE_ID
        for i in range(0, len(self.archive), 4096):
            if self.interrupt_after is not None and i >= self.interrupt_after:
                raise KeyboardInterrupt
            yield self.archive[i:i + 4096]

    def images(self, all=False, quiet=False):
        return sorted(self.existing)

    def load_image(self, data):
        while True:
            block = data.read(65536)
            if not block:
                break
            self.loaded_bytes += len(block)
        return iter([{"stream": f"Loaded image ID: {self.load_id}\n"}])

    def tag(self, image, repository, tag, force=False):
        self.tags.append((image, f"{repository}:{tag}"))
        return True

    def remove_image(self, image, noprune=False):
        self.removed.append(image)


class FakeClient:
    def __init__(self, api):
        self.api = api


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DLENV_STATE_DIR", str(tmp_path / "state"))


def members(path: Path) -> list:
    with tarfile.open(path, "r:*") as tar:
        return [(m.name, tar.extractfile(m).read() if m.isreg() else None) for m in tar]


@pytest.mark.parametrize("name", ["py.tar", "py.tar.gz"])
def test_save_writes_the_manifest_first_then_the_engines_archive(py, tmp_path, state, name):
    api = FakeAPI(py)
    progress = []
    result = save_image(FakeClient(api), py, tmp_path / name, on_progress=progress.append)
    out = tmp_path / name
    assert result.image_id == IMAGE_ID and result.image == py.hash_tag and result.bytes_written == out.stat().st_size
    if name.endswith(".gz"):
        assert out.read_bytes()[:2] == b"\x1f\x8b"
        gzip.decompress(out.read_bytes())
    got = members(out)
    assert got[0][0] == MANIFEST_NAME
    manifest = json.loads(got[0][1])
    assert manifest == {"format": 1, "stack": "python", "content_hash": py.content_hash, "image_id": IMAGE_ID,
                        "image": py.hash_tag, "dlenv_version": __version__, "versions": {"python": "3.11"},
                        "python_packages": []}
    with tarfile.open(fileobj=io.BytesIO(engine_archive())) as src:
        expected = [(m.name, src.extractfile(m).read()) for m in src]
    assert got[1:] == expected
    assert progress and progress[-1] == len(engine_archive())
    assert not (tmp_path / f"{name}.partial").exists()
    assert read_manifest(out) == manifest


def test_save_interrupted_leaves_no_file(py, tmp_path, state):
    api = FakeAPI(py, interrupt_after=20000)
    with pytest.raises(KeyboardInterrupt):
        save_image(FakeClient(api), py, tmp_path / "out.tar")
    assert not list(tmp_path.glob("out.tar*"))


def test_save_refuses_an_existing_file_and_a_missing_image(py, tmp_path, state):
    target = tmp_path / "out.tar"
    target.write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        save_image(FakeClient(FakeAPI(py)), py, target)
    assert target.read_text() == "keep me"
    save_image(FakeClient(FakeAPI(py)), py, target, force=True)
    assert members(target)[0][0] == MANIFEST_NAME
    api = FakeAPI(py, labels={HASH_LABEL: "0" * 64})             # the tag names another build
    with pytest.raises(EngineError, match="does not exist"):
        save_image(FakeClient(api), py, tmp_path / "other.tar")
    assert not (tmp_path / "other.tar").exists()


def test_save_refuses_an_engine_archive_without_the_image(py, tmp_path, state):
    api = FakeAPI(py, archive=engine_archive(image_hex="cd" * 32))
    with pytest.raises(EngineError, match="does not hold the image"):
        save_image(FakeClient(api), py, tmp_path / "out.tar")
    assert not list(tmp_path.glob("out.tar*"))


@pytest.fixture
def saved(py, tmp_path, state):
    path = tmp_path / "py.tar"
    save_image(FakeClient(FakeAPI(py)), py, path)
    return path


def test_load_tags_after_the_checks(py, saved, state):
    api = FakeAPI(py)
    result = load_image(FakeClient(api), saved)
    assert api.loaded_bytes == saved.stat().st_size          # the whole file went to the engine as it is
    assert api.tags == [(IMAGE_ID, py.hash_tag), (IMAGE_ID, "dlenv/python:latest")]
    assert result.tags == [py.hash_tag, "dlenv/python:latest"] and result.fresh and result.image_id == IMAGE_ID


@pytest.mark.parametrize("change, message", [
    ({"labels": {HASH_LABEL: "f" * 64, "org.dlenv.stack": "python"}}, "content-hash label"),
    ({"load_id": "sha256:" + "cd" * 32}, "the manifest says sha256:abababab"),
    ({"labels": {HASH_LABEL: None, "org.dlenv.stack": "python"}}, "content-hash label"),
])
def test_load_mismatch_moves_no_tag_and_drops_the_new_image(py, saved, state, change, message):
    api = FakeAPI(py, **change)
    with pytest.raises(ArchiveError) as info:
        load_image(FakeClient(api), saved)
    assert message in info.value.one_line() and "no tag was moved" in info.value.one_line()
    assert api.tags == []
    assert api.removed == [api.load_id]


def test_load_mismatch_keeps_an_image_the_engine_already_had(py, saved, state):
    other = "sha256:" + "cd" * 32
    api = FakeAPI(py, load_id=other, existing=[other])
    with pytest.raises(ArchiveError):
        load_image(FakeClient(api), saved)
    assert api.tags == [] and api.removed == []


def rewrite_manifest(src: Path, dst: Path, **changes) -> Path:
    with tarfile.open(src) as tar_in, tarfile.open(dst, "w") as tar_out:
        for m in tar_in:
            data = tar_in.extractfile(m).read()
            if m.name == MANIFEST_NAME:
                manifest = json.loads(data)
                manifest.update(changes)
                data = json.dumps(manifest).encode()
                m.size = len(data)
            tar_out.addfile(m, io.BytesIO(data))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"format": 2}, "has format 2"),
    ({"content_hash": "nothex"}, "content_hash is missing or invalid"),
    ({"stack": "../../etc"}, "stack is missing or invalid"),
    ({"image_id": "abc"}, "image_id is missing or invalid"),
])
def test_load_refuses_a_bad_manifest_before_touching_the_engine(py, saved, tmp_path, state, changes, message):
    bad = rewrite_manifest(saved, tmp_path / "bad.tar", **changes)
    api = FakeAPI(py)
    with pytest.raises(ArchiveError, match=re.escape(message)):
        load_image(FakeClient(api), bad)
    assert api.loaded_bytes == 0 and api.tags == []


def test_load_refuses_what_is_not_a_dlenv_archive(py, tmp_path, state):
    plain = tmp_path / "plain.tar"
    plain.write_bytes(engine_archive())
    with pytest.raises(ArchiveError, match="is not a dlenv save archive"):
        read_manifest(plain)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        read_manifest(junk)
    with pytest.raises(ArchiveError, match="does not exist"):
        read_manifest(tmp_path / "missing.tar")


def test_errors_are_dlenv_errors():
    assert issubclass(ExportError, DlenvError) and issubclass(ArchiveError, DlenvError)


def test_export_templates_are_found_with_a_foreign_catalog(tmp_path, monkeypatch, py):
    """A DLENV_TEMPLATES_DIR catalog without exports/ still gets the shipped export templates."""
    foreign = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", foreign, ignore=shutil.ignore_patterns("exports"))
    monkeypatch.setenv("DLENV_TEMPLATES_DIR", str(foreign))
    assert apptainer_def(py).startswith("Bootstrap: docker-daemon\n")


def test_load_refuses_an_image_that_is_not_the_locks_recorded_id(py, saved, state):
    """Issue #17: with a lock that records reproducible ids, only one of them is tagged."""
    other = "sha256:" + "cd" * 32
    key = "buildah-1.28/linux-amd64"
    api = FakeAPI(py)
    with pytest.raises(ArchiveError) as info:
        load_image(FakeClient(api), saved, recorded=lambda stack, content_hash: {key: other})
    line = info.value.one_line()
    assert "not the lock's reproducible image" in line and key in line and "no tag was moved" in line
    assert api.tags == [] and api.removed == [api.load_id]
    api = FakeAPI(py)
    asked = []
    load_image(FakeClient(api), saved,
               recorded=lambda stack, content_hash: asked.append((stack, content_hash)) or {key: IMAGE_ID})
    assert api.tags and asked == [("python", py.content_hash)]


# ------------------------------------------------------------------------- charliecloud and podman

# srun that starts its "tasks" here: drops its own options and runs the rest twice, as ranks 0 and 1 of
# nodes n1 and n2; the runtimes print their argv and the environment the rank needs.
RUN_SRUN = """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
for rank in 0 1; do
  SLURM_JOB_ID=7 SLURM_STEP_ID=0 SLURMD_NODENAME=n$((rank + 1)) SLURM_PROCID=$rank "$@" || exit $?
done
"""
RUNTIME_STUB = """#!/bin/sh
python3 -c 'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "node": os.environ.get("SLURMD_NODENAME"),
    "vader": os.environ.get("OMPI_MCA_btl_vader_backing_directory"), "gds": os.environ.get("PMIX_MCA_gds"),
    "shm_exists": os.path.isdir(os.environ.get("OMPI_MCA_btl_vader_backing_directory") or "/nonexistent")}))' \\
    "$(basename "$0")" "$@"
exit "${STUB_EXIT:-0}"
"""


def run_through(tmp_path: Path, text: str, files=(), env=None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(RUN_SRUN)
    for name in ("ch-run", "podman"):
        (bin_dir / name).write_text(RUNTIME_STUB)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    work = tmp_path / "submit dir"
    work.mkdir(exist_ok=True)
    for name in files:
        (work / name).mkdir() if name.endswith("/") else (work / name).write_text("")
    (tmp_path / "job.sbatch").write_text(text)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_NUM_NODES": "2",
                "SLURM_JOB_ID": "7", **(env or {})}
    return subprocess.run(["bash", str(tmp_path / "job.sbatch")], cwd=work, capture_output=True, text=True,
                          env=full_env, timeout=30)


def test_slurm_charliecloud_runs_the_command_word_for_word_in_one_container_per_node(mn, tmp_path):
    image = f"dlenv-chainermn-{mn.content_hash[:16]}"
    text = slurm_script(mn, HOSTILE, nodes=2, gpus_per_node=0, runtime="charliecloud")
    assert f"dlenv export charliecloud chainermn -o ./{image}" in text
    proc = run_through(tmp_path, text, files=[image + "/"])
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in proc.stdout.splitlines()]
    work = str(tmp_path / "submit dir")
    assert [c["node"] for c in calls] == ["n1", "n2"]
    for c in calls:
        assert c["argv"] == ["ch-run", f"--join-tag=7.0.{c['node']}", "--set-env", "--home",
                             f"--bind={work}:/workspace", "--cd=/workspace", f"./{image}", "--", *HOSTILE]
        # Open MPI's segments of one node go to its own folder, which exists while the rank runs ...
        assert c["vader"] == f"/dev/shm/dlenv-7.0.{c['node']}" and c["shm_exists"] and c["gds"] == "hash"
        assert not Path(c["vader"]).exists()          # ... and is gone after it
    assert not list((tmp_path / "submit dir").glob("pwned*"))


def test_slurm_charliecloud_rank_keeps_the_exit_status_and_removes_its_folder(mn, tmp_path):
    image = "img"
    text = slurm_script(mn, ["python", "x.py"], nodes=2, gpus_per_node=0, runtime="charliecloud", image_file=image)
    proc = run_through(tmp_path, text, files=[image + "/"], env={"STUB_EXIT": "3", "SLURM_JOB_ID": "7"})
    assert proc.returncode == 3
    assert "dlenv: rank 0 failed first, with exit status 3" in proc.stderr
    assert not Path("/dev/shm/dlenv-7.0.n1").exists()
    assert not (tmp_path / "submit dir" / ".dlenv-ranks-7").exists()


def test_slurm_charliecloud_stops_when_the_image_is_missing(mn, tmp_path):
    proc = run_through(tmp_path, slurm_script(mn, COMMAND, nodes=1, gpus_per_node=0, runtime="charliecloud"))
    assert proc.returncode == 1 and proc.stdout == "" and "not found" in proc.stderr


def test_slurm_charliecloud_refuses_a_registry(mn):
    with pytest.raises(ExportError, match="--registry has no use with --runtime charliecloud"):
        slurm_script(mn, COMMAND, nodes=1, gpus_per_node=0, runtime="charliecloud", registry=REGISTRY)


def test_slurm_podman_puts_the_archive_on_every_node_then_runs_each_rank_as_the_user(mn, tmp_path):
    archive = f"dlenv-chainermn-{mn.content_hash[:16]}.tar"
    text = slurm_script(mn, HOSTILE, nodes=2, gpus_per_node=0, runtime="podman")
    assert f"docker save {mn.hash_tag} -o ./{archive}" in text
    proc = run_through(tmp_path, text, files=[archive])
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in proc.stdout.splitlines()]
    # the provisioning step: `podman image exists` answers 0 (the stub), so nothing is fetched
    assert [c["argv"][:2] for c in calls[:2]] == [["podman", "image"], ["podman", "image"]]
    runs = calls[2:]
    work = str(tmp_path / "submit dir")
    for c in runs:
        argv = c["argv"]
        assert argv[:2] == ["podman", "run"] and argv[-len(HOSTILE) - 1:] == [mn.hash_tag, *HOSTILE]
        assert "--userns" in argv and argv[argv.index("--userns") + 1] == "keep-id"
        assert f"{work}:/workspace" in argv and f"HOME={tmp_path}" in argv
        assert f"OMPI_MCA_btl_vader_backing_directory=/dev/shm/dlenv-7.0.{c['node']}" in argv
        assert "OMPI_MCA_btl_vader_single_copy_mechanism=none" in argv and "--device" not in argv
    assert not list((tmp_path / "submit dir").glob("pwned*"))


# srun whose tasks run at the same time (two nodes sharing one podman storage, as two slurmd on one host or a
# shared home), and a podman whose storage is a folder: `pull` takes half a second to put the image there.
PARALLEL_SRUN = """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
SLURMD_NODENAME=n1 SLURM_PROCID=0 "$@" & first=$!
SLURMD_NODENAME=n2 SLURM_PROCID=1 "$@" & second=$!
wait "$first" && wait "$second"
"""
FOLDER_PODMAN = """#!/bin/bash
case "$1 $2" in
  "image exists") [ -e "$FAKE_STORE/image" ] ;;
  "info --format") echo "$FAKE_STORE" ;;
  "pull --quiet") echo "$3 on $SLURMD_NODENAME" >> "$FAKE_STORE/pulls"; sleep 0.5; touch "$FAKE_STORE/image" ;;
  "run --rm") exit 0 ;;
  *) exit 125 ;;
esac
"""


@pytest.mark.parametrize("registry", [None, REGISTRY])
def test_slurm_podman_nodes_sharing_a_storage_fetch_the_image_once(mn, tmp_path, registry):
    archive = f"dlenv-chainermn-{mn.content_hash[:16]}.tar"
    bin_dir, store, work = tmp_path / "bin", tmp_path / "storage", tmp_path / "submit"
    for folder in (bin_dir, store, work):
        folder.mkdir()
    (bin_dir / "srun").write_text(PARALLEL_SRUN)
    (bin_dir / "podman").write_text(FOLDER_PODMAN)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    (work / archive).write_text("")
    (tmp_path / "job.sbatch").write_text(slurm_script(mn, ["true"], nodes=2, gpus_per_node=0, runtime="podman",
                                                      registry=registry))
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], cwd=work, capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_NUM_NODES": "2",
                               "SLURM_JOB_ID": "7", "FAKE_STORE": str(store)})
    assert proc.returncode == 0, proc.stderr
    pulls = (store / "pulls").read_text().splitlines()
    source = f"{REGISTRY}/dlenv/chainermn:{mn.content_hash[:16]}" if registry else f"docker-archive:./{archive}"
    assert len(pulls) == 1 and pulls[0].startswith(source + " on n"), pulls    # the other node waited, then found it
    assert proc.stdout.count("is now in the podman storage of ") == 1, proc.stdout
    assert (store / "dlenv-provision.lock").exists()


def test_slurm_podman_refuses_an_archive_path_with_a_colon(mn):
    with pytest.raises(ExportError, match="where a ':' would end the path"):
        slurm_script(mn, COMMAND, nodes=2, gpus_per_node=0, runtime="podman", image_file="/data/img:v1.tar")


def test_slurm_podman_from_a_registry_pulls_and_passes_the_gpus(mn):
    text = slurm_script(mn, COMMAND, nodes=2, gpus_per_node=4, runtime="podman", registry=REGISTRY)
    assert 'podman pull --quiet "$IMAGE"' in text and "ARCHIVE" not in text and "docker-archive" not in text
    assert f"export IMAGE=registry.example.org:5000/team/dlenv/chainermn:{mn.content_hash[:16]}" in text
    assert "--device nvidia.com/gpu=all" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize("runtime", ["charliecloud", "podman"])
def test_a_rank_killed_by_a_signal_ends_by_that_signal(tmp_path, runtime):
    """srun exits with the highest status of its tasks: a rank killed by --kill-on-bad-exit must end by the
    signal (status -15 here), not exit 143, or it would hide the failed rank's own status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / ("ch-run" if runtime == "charliecloud" else "podman")
    tool.write_text("#!/bin/sh\nkill -TERM $$\n")
    tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "IMAGE": "img", "SLURM_JOB_ID": "9",
           "SLURM_STEP_ID": "0", "SLURMD_NODENAME": f"t{os.getpid()}"}
    proc = subprocess.run(["bash", "-c", _rank_script(runtime, 0), "dlenv-rank", "true"], env=env, cwd=tmp_path,
                          timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert not Path(f"/dev/shm/dlenv-9.0.t{os.getpid()}").exists()


@pytest.mark.parametrize("runtime", ["charliecloud", "podman"])
def test_a_rank_signalled_by_slurm_removes_its_folder_and_ends_by_the_signal(tmp_path, runtime):
    """Slurm signals every process of a step (the wrapper and the runtime): the wrapper waits for the runtime,
    removes the node's shared-memory folder and ends by the same signal."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / ("ch-run" if runtime == "charliecloud" else "podman")
    tool.write_text("#!/bin/sh\nexec sleep 30\n")
    tool.chmod(0o755)
    node = f"s{os.getpid()}{runtime}"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "IMAGE": "img", "SLURM_JOB_ID": "9",
           "SLURM_STEP_ID": "0", "SLURMD_NODENAME": node}
    proc = subprocess.Popen(["bash", "-c", _rank_script(runtime, 0), "dlenv-rank", "true"], env=env, cwd=tmp_path,
                            start_new_session=True)
    shm = Path(f"/dev/shm/dlenv-9.0.{node}")
    for _ in range(100):
        if shm.is_dir():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert shm.is_dir()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    assert not shm.exists()
