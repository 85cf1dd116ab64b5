"""The local Slurm cluster's pure parts (no engine): the node image's Dockerfile and hash, slurm.conf and
node lines, the readings of sinfo and scontrol, the exit code a submit gives, the native sbatch export
(run for real against a stub srun), the srun options of `verify --slurm`, the cluster state file, teardown
when the engine removes a container itself, and the CLI's `slurm` group."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker.errors
import pytest
import requests

from builder.cli import verify as verify_cli
from builder.errors import ExportError, SlurmError
from builder.names import SLURM_NODE_LABEL, SLURM_VERSION_LABEL, slurm_node_tag
from builder.outputs.exports.slurm import slurm_script
from builder.outputs.slurm import (check_job_id, job_exit_code, memory_mib, node_hosts, node_image, node_range,
                                   parse_job, sinfo_nodes, slurm_conf, unusable_nodes, version_label_dockerfile)
from builder.plan.plan import plan
from builder.run.slurm import ClusterState, down, load_state, state_path
from builder.run.slurm_jobs import script_in_workspace
from builder.spec.stack import Check
from builder.verify.checks import CheckResult, PlannedCheck, Report
from builder.verify.slurm import mpi_checks, srun_args

HASH = "5ef572c23a76bed8" + "0" * 48
STUB = '#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps({"argv": ["srun", *sys.argv[1:]]}))\n'


@pytest.fixture(scope="module")
def mn():
    return plan("chainermn")


# ------------------------------------------------------------------------------------ node image

def test_node_image_dockerfile():
    spec = node_image("chainermn", "dlenv/chainermn:5ef572c23a76bed8", HASH, "1000:1000")
    text = spec.dockerfile
    assert text.splitlines()[3] == "FROM dlenv/chainermn:5ef572c23a76bed8"
    assert "slurmd slurmctld slurm-client munge libpmix2" in text and "libpmix-dev" not in text.split("RUN", 1)[1]
    assert "/etc/munge/munge.key" in text.split("RUN", 1)[1]           # the key munge's postinst made
    assert "ln -sf libpmix.so.2" in text
    assert "slurm.conf" not in text and "munge.key /" not in text      # no config, no key in the image
    assert f'LABEL {SLURM_NODE_LABEL}="{spec.node_hash}"' in text
    assert text.rstrip().splitlines()[-1] == "USER 1000:1000"
    assert spec.files["dlenv-slurm-start"][1] == 0o755
    assert b"slurmctld -D" in spec.files["dlenv-slurm-start"][0]
    assert "http" not in text                                           # apt uses the image's own sources
    # ... or, on an image without any (built with buildah), the host's, for the apt step only
    assert "COPY dlenv-debian.sources /etc/apt/sources.list.d/dlenv-debian.sources" in text
    assert "rm -rf" in text and "/etc/apt/sources.list.d/dlenv-debian.sources /etc/munge/munge.key" in text
    sources = node_image("chainermn", "dlenv/chainermn:5ef572c23a76bed8", HASH, "1000:1000", b"Types: deb\n")
    assert sources.files["dlenv-debian.sources"] == (b"Types: deb\n", 0o644)
    assert sources.node_hash == spec.node_hash                          # machine-dependent text: not hashed


def test_node_hash_follows_the_stack_and_is_stable():
    a = node_image("chainermn", "dlenv/chainermn:5ef572c23a76bed8", HASH, "1000:1000")
    b = node_image("chainermn", "dlenv/chainermn:5ef572c23a76bed8", HASH, "1000:1000")
    c = node_image("chainermn", "dlenv/chainermn:5ef572c23a76bed8", "1" + HASH[1:], "1000:1000")
    assert a.node_hash == b.node_hash != c.node_hash
    assert slurm_node_tag("chainermn", HASH) == "dlenv/chainermn-slurm:5ef572c23a76bed8"


@pytest.mark.parametrize("image,user", [("dlenv/x:1; rm -rf /", "1000"), ("dlenv/x:1", "dlenv; id")])
def test_node_image_refuses_odd_values(image, user):
    with pytest.raises(SlurmError):
        node_image("x", image, HASH, user)


def test_version_label():
    assert version_label_dockerfile("dlenv/a-slurm:0123", SLURM_VERSION_LABEL, "22.05.8-4+deb12u3") == \
        'FROM dlenv/a-slurm:0123\nLABEL org.dlenv.slurm-version="22.05.8-4+deb12u3"\n'
    with pytest.raises(SlurmError, match="no Debian version"):
        version_label_dockerfile("dlenv/a-slurm:0123", SLURM_VERSION_LABEL, '1" evil="x')


# ------------------------------------------------------------------------------------ slurm.conf

def test_node_names():
    assert node_hosts(3) == ["node1", "node2", "node3"]
    assert node_range(1) == "node1" and node_range(2) == "node[1-2]"
    for bad in (0, 17, True, "2"):
        with pytest.raises(SlurmError):
            node_range(bad)


def test_slurm_conf():
    text = slurm_conf("0123abcd", 2, 2, memory_mib(24105 * 1024 * 1024 + 5))
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    conf = dict(ln.split("=", 1) for ln in lines if not ln.startswith(("NodeName", "PartitionName")))
    assert conf["SlurmctldHost"] == "ctl" and conf["MpiDefault"] == "pmix" and conf["KillOnBadExit"] == "1"
    assert conf["ProctrackType"] == "proctrack/linuxproc" and conf["TaskPlugin"] == "task/none"
    assert conf["SlurmdUser"] == "root" and conf["AuthType"] == "auth/munge"
    assert "NodeName=node[1-2] CPUs=2 RealMemory=24105 State=UNKNOWN" in lines
    assert "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP" in lines
    with pytest.raises(SlurmError):
        slurm_conf("../etc", 2, 2, 100)
    with pytest.raises(SlurmError):
        slurm_conf("0123abcd", 2, 0, 100)


def test_sinfo_states():
    states = sinfo_nodes("node1 idle\nnode2 idle*\nnode3 inval\nnode4 drain\nnode5 mix\n")
    assert states["node1"] == "idle" and states["node2"] == "idle*"
    assert unusable_nodes(states) == ["node3 inval", "node4 drain"]


# ------------------------------------------------------------------------------------ jobs

SCONTROL = ("JobId=4 JobName=smoke job UserId=dlenv(1000) GroupId=dlenv(1000) JobState=FAILED Reason=NonZeroExitCode "
            "Dependency=(null) ExitCode=3:0 NodeList=node[1-2] BatchHost=node1 ReqB:S:C:T=0:0:*:* "
            "StdErr=/workspace/slurm-4.out StdIn=/dev/null StdOut=/workspace/slurm-4.out Power=")


def test_parse_job():
    fields = parse_job(SCONTROL)
    assert fields["JobName"] == "smoke job" and fields["JobState"] == "FAILED" and fields["ExitCode"] == "3:0"
    assert fields["BatchHost"] == "node1" and fields["StdOut"] == "/workspace/slurm-4.out"
    assert fields["ReqB:S:C:T"] == "0:0:*:*" and fields["Power"] == ""


@pytest.mark.parametrize("state,code,expected", [
    ("COMPLETED", "0:0", 0), ("FAILED", "3:0", 3), ("FAILED", "0:9", 1), ("FAILED", "0:53", 1),
    ("FAILED", "143:0", 143), ("TIMEOUT", "0:15", 1), ("CANCELLED", "0:15", 1), ("FAILED", "0:0", 1),
    ("FAILED", "", 1)])
def test_job_exit_code(state, code, expected):
    assert job_exit_code({"JobState": state, "ExitCode": code}) == expected


def test_job_id():
    assert check_job_id("12\n") == "12" and check_job_id("7;dlenv") == "7"
    with pytest.raises(SlurmError):
        check_job_id("sbatch: error: Batch job submission failed")


def test_script_must_be_in_the_shared_folder(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "job.sbatch").write_text("#!/bin/bash\n")
    (tmp_path / "other.sbatch").write_text("#!/bin/bash\n")
    state = ClusterState("0123abcd", "img", 2, str(tmp_path / "ws"), str(tmp_path / "s"))
    assert script_in_workspace(state, tmp_path / "ws" / "job.sbatch") == "job.sbatch"
    with pytest.raises(SlurmError, match="is not in"):
        script_in_workspace(state, tmp_path / "other.sbatch")
    with pytest.raises(SlurmError, match="shares no host folder"):
        script_in_workspace(ClusterState("0123abcd", "img", 2, None, "s"), tmp_path / "ws" / "job.sbatch")


def test_state_file(tmp_path):
    assert load_state(state_path(tmp_path)) is None
    state_path(tmp_path).write_text(json.dumps({"cluster_id": "0123abcd", "image": "i", "nodes": 2,
                                                "workspace": None, "secrets": "/x"}))
    state = load_state(state_path(tmp_path))
    assert state.containers == ["dlenv-slurm-0123abcd-ctl", "dlenv-slurm-0123abcd-node1", "dlenv-slurm-0123abcd-node2"]
    state_path(tmp_path).write_text('{"cluster_id": "$(id)"}')
    with pytest.raises(SlurmError, match="damaged"):
        load_state(state_path(tmp_path))


class _EngineRemovingOne:
    """The engine while another removal of the controller is under way (as SIGHUP to a `slurm up` that was
    creating a node left it): down() waits for it before it removes the network."""

    def __init__(self):
        self.api, self.networks = self, self
        self.rows = [{"Id": "a" * 64, "Names": ["/dlenv-slurm-0badcafe-ctl"]},
                     {"Id": "b" * 64, "Names": ["/dlenv-slurm-0badcafe-node1"]}]
        self.removed, self.inspected, self.network_removed = [], 0, False

    def containers(self, all, filters):
        return list(self.rows)

    def remove_container(self, container_id, force):
        if container_id.startswith("a"):
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError("409 Conflict", response=response,
                                         explanation=f"removal of container {container_id} is already in progress")
        self.removed.append(container_id)

    def inspect_container(self, container_id):
        self.inspected += 1
        if self.inspected > 2:
            raise docker.errors.NotFound("gone")
        return {}

    def list(self, filters):
        return [self]

    def remove(self):
        assert self.inspected > 2, "the network went before the container the engine was removing"
        self.network_removed = True


def test_down_waits_for_a_removal_the_engine_began(tmp_path):
    engine = _EngineRemovingOne()
    state = ClusterState("0badcafe", "dlenv/x-slurm:1", 1, None, str(tmp_path / "slurm-0badcafe"))
    assert down(engine, state) == 1
    assert engine.removed == ["b" * 64] and engine.network_removed


# ------------------------------------------------------------------------------------ verify --slurm

def test_srun_args_and_mpi_checks():
    assert srun_args(2, 2, 180) == ["--mpi=pmix", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--time=3"]
    assert srun_args(4, 2, 30)[1:4] == ["--nodes=2", "--ntasks=4", "--ntasks-per-node=2"]
    checks = [PlannedCheck(Check("a", "script", "x.py", ranks=2), {}),
              PlannedCheck(Check("b", "script", "y.py", ranks=2, device=True), {}),
              PlannedCheck(Check("c", "script", "z.py"), {}), PlannedCheck(Check("d", "command", "true"), {})]
    assert [p.name for p in mpi_checks(checks)] == ["a"]


# ------------------------------------------------------------------------------------ export and CLI

def test_native_export_runs_srun_directly(mn, tmp_path):
    text = slurm_script(mn, ["python", "train.py", "a b"], nodes=2, gpus_per_node=0, time_limit="00:03:00",
                        runtime="native")
    assert "apptainer" not in text.split("#SBATCH", 1)[1] and "--container" not in text
    assert "srun -n1 --mpi=pmix true" in text and "dlenv/chainermn-slurm:" in text
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(STUB)
    (tmp_path / "bin" / "srun").chmod(0o755)
    (tmp_path / "job.sbatch").write_text(text)
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["argv"] == ["srun", "--kill-on-bad-exit=1", "--mpi=pmix", "python", "train.py", "a b"]
    with pytest.raises(ExportError, match="no use with --runtime native"):
        slurm_script(mn, ["true"], nodes=1, gpus_per_node=0, runtime="native", image_file="x.sif")
    with pytest.raises(ExportError, match="hybrid needs --runtime apptainer"):
        slurm_script(mn, ["true"], nodes=1, gpus_per_node=0, runtime="native", mpi_mode="hybrid")


def test_cli_slurm_group(cli):
    result = cli("slurm", "--help")
    assert result.exit_code == 0 and all(c in result.output for c in ("up", "submit", "down"))
    assert "--slurm" in cli("verify", "--help").output
    assert "native" in cli("export", "slurm", "--help").output


def test_templates_ship():
    root = Path(__file__).resolve().parents[2] / "templates" / "slurm"
    assert {p.name for p in root.iterdir()} == {"node.Dockerfile.j2", "dlenv-slurm-start", "slurm.conf.j2",
                                                   "host-slurm.conf.j2"}


def test_verify_slurm_exits_with_the_failed_jobs_code(cli, monkeypatch, mn):
    """The CLI wiring: a failed Slurm check makes verify exit with that job's exit code."""
    report = Report(image="dlenv/chainermn-slurm:x", nodes=2,
                    results=[CheckResult("smoke", "script", "failed", 1.0, "srun ...", "boom", "exit status 143")])
    monkeypatch.setattr(verify_cli.engine, "connect", lambda: object())
    monkeypatch.setattr(verify_cli, "verify_target", lambda client, target: (mn, mn.hash_tag, {}))
    monkeypatch.setattr(verify_cli, "node_image_for", lambda ctx, client, target, build: "dlenv/chainermn-slurm:x")
    monkeypatch.setattr(verify_cli, "verify_slurm", lambda *a, **k: (report, 143))
    result = cli("verify", "chainermn", "--slurm")
    assert result.exit_code == 143 and "1 of 1 Slurm checks failed" in result.stderr
    assert cli("verify", "chainermn", "--slurm", "--json").exit_code == 143
