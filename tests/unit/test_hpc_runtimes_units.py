"""The HPC-runtime parts that need no engine, Slurm or runtime: the host Slurm's layout and slurm.conf (values
checked before they reach a file without quoting), the record of a leftover cluster that `sweep` trusts
only when its owner is gone, the Charliecloud image record `dlenv verify PATH` reads, and the CLI's
refusals. The real thing runs in tests/integration/test_hpc_runtimes.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.engine.charliecloud import export_charliecloud, read_record
from builder.errors import ExportError, SlurmError
from builder.names import CHARLIECLOUD_RECORD
from builder.outputs.hostslurm import host_layout, host_slurm_conf, job_user_name
from builder.plan.plan import plan
from builder.run import hostslurm
from builder.verify.hostslurm import _time_limit
from builder.verify.slurm import ranks_layout

CLUSTER = "0a1b2c3d"


def layout(**changes):
    args = dict(cluster_id=CLUSTER, folder="/tmp/dlenv-slurm-0a1b2c3d-x1", host="vm", ports=[16000, 16001, 16002],
                cpus=2, memory_mib=23000, job_user=job_user_name(CLUSTER))
    args.update(changes)
    return host_layout(**args)


def test_host_slurm_conf_gives_every_slurmd_its_port_spool_and_tmpfs():
    text = host_slurm_conf(layout())
    assert "SlurmctldHost=vm(127.0.0.1)\nSlurmctldPort=16000\n" in text
    assert "NodeName=node1 NodeHostname=vm NodeAddr=127.0.0.1 Port=16001 CPUs=2 RealMemory=23000" in text
    assert "NodeName=node2 NodeHostname=vm NodeAddr=127.0.0.1 Port=16002 CPUs=2 RealMemory=23000" in text
    assert "SlurmdSpoolDir=/tmp/dlenv-slurm-0a1b2c3d-x1/spool-%n\nTmpFS=/tmp/dlenv-slurm-0a1b2c3d-x1/tmp-%n" in text
    assert "AuthInfo=socket=/tmp/dlenv-slurm-0a1b2c3d-x1/munge/munge.socket" in text
    assert "KillOnBadExit=1" in text and "MpiDefault=pmix" in text and "dlenv-job-0a1b2c3d" in text


@pytest.mark.parametrize("changes, message", [
    ({"folder": "/tmp/with space"}, "is not a plain absolute path"),
    ({"folder": "relative/x"}, "is not a plain absolute path"),
    ({"folder": "/tmp/a\nSlurmUser=evil"}, "is not a plain absolute path"),
    ({"folder": "/tmp/../etc"}, "is not a plain absolute path"),
    ({"host": "vm;x"}, "cannot be a Slurm NodeHostname"),
    ({"host": ""}, "cannot be a Slurm NodeHostname"),
    ({"job_user": "Root!"}, "is not a user name"),
    ({"cpus": 0}, "CPUs=0"),
    ({"memory_mib": True}, "RealMemory=True"),
    ({"ports": [16000]}, "no usable ports"),
    ({"ports": [16000, 16000]}, "no usable ports"),
    ({"ports": [80, 16001]}, "no usable ports"),
    ({"cluster_id": "../x"}, "is not a cluster id"),
])
def test_host_layout_refuses_what_slurm_conf_cannot_hold(changes, message):
    with pytest.raises(SlurmError) as info:
        layout(**changes)
    assert message in info.value.one_line() and "\n" not in info.value.one_line()


def test_host_layout_node_count_follows_the_ports():
    assert [n.name for n in layout(ports=[16000, 16001, 16002, 16003]).nodes] == ["node1", "node2", "node3"]


def test_sweep_keeps_a_cluster_whose_owner_runs_and_removes_one_whose_owner_is_gone(tmp_path, monkeypatch):
    removed = []
    monkeypatch.setattr(hostslurm, "_teardown", lambda folder, user, sessions, uid: removed.append(folder))
    alive = [os.getpid(), hostslurm._start_time(os.getpid())]
    for name, owner in (("live", alive), ("dead", [os.getpid(), alive[1] + 1]), ("nobody", None)):
        (tmp_path / f"hostslurm-{name}.json").write_text(json.dumps({
            "cluster_id": CLUSTER, "folder": f"/tmp/dlenv-slurm-{name}", "job_user": job_user_name(CLUSTER),
            "owner": owner, "sessions": [123]}))
    (tmp_path / "hostslurm-damaged.json").write_text("{not json")
    assert hostslurm.sweep(tmp_path) == 2
    assert sorted(removed) == ["/tmp/dlenv-slurm-dead", "/tmp/dlenv-slurm-nobody"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostslurm-live.json"]


def test_host_slurm_needs_root(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmError, match="needs root"):
        hostslurm.up(2, tmp_path)


@pytest.mark.parametrize("ranks, nodes, expected", [(2, 2, (2, 1)), (4, 2, (2, 2)), (3, 2, (2, 2)), (1, 2, (1, 1))])
def test_ranks_spread_over_the_nodes(ranks, nodes, expected):
    assert ranks_layout(ranks, nodes) == expected


@pytest.mark.parametrize("seconds, limit", [(60, "00:01:00"), (61, "00:02:00"), (180, "00:03:00"), (3700, "01:02:00")])
def test_a_checks_timeout_becomes_the_jobs_time_limit(seconds, limit):
    assert _time_limit(seconds) == limit


# ------------------------------------------------------------------------------- charliecloud record

def fake_image(tmp_path: Path, **record) -> Path:
    image = tmp_path / "img"
    (image / "ch").mkdir(parents=True)
    (image / "ch" / "environment").write_text("PATH=/opt/venv/bin:/usr/bin\n")
    (image / CHARLIECLOUD_RECORD).write_text(json.dumps(record))
    return image


def test_read_record_of_a_directory_image(tmp_path):
    image = fake_image(tmp_path, stack="python", content_hash="ab" * 32)
    assert read_record(str(image))["stack"] == "python"
    assert read_record(str(tmp_path)) is None          # a folder that is no Charliecloud image
    (image / CHARLIECLOUD_RECORD).write_text("{damaged")
    with pytest.raises(ExportError, match="is damaged"):
        read_record(str(image))


def test_verify_names_the_lock_a_charliecloud_image_was_made_from(cli, tmp_path):
    p = plan("python")
    image = fake_image(tmp_path, stack="python", content_hash=p.content_hash, lock=p.lock.digest,
                       image=p.hash_tag, image_id="sha256:" + "1" * 64, dlenv="0.1.0")
    result = cli("verify", str(image))
    assert result.exit_code == 0, result.stderr
    assert f"Charliecloud image of python, content hash {p.content_hash[:16]}" in result.stdout
    assert "that is the current lock of python" in result.stderr and "python.lock" in result.stderr
    stale = fake_image(tmp_path / "old", stack="python", content_hash="0" * 64, lock="x", image="dlenv/python:0")
    result = cli("verify", str(stale))
    assert result.exit_code == 1
    assert "was made from another lock of python" in result.stderr and "dlenv export charliecloud python" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_runtime_options_go_with_slurm(cli):
    result = cli("verify", "chainermn", "--runtime", "podman")
    assert result.exit_code == 1 and "--runtime and --image-file go with --slurm" in result.stderr
    result = cli("verify", "chainermn", "--image-file", "x")
    assert result.exit_code == 1 and "--runtime and --image-file go with --slurm" in result.stderr


@pytest.mark.parametrize("output, fmt, message", [
    ("img", "squashfs", "a SquashFS image's name ends in"),
    ("img.sqfs", "dir", "names a SquashFS file"),
    ("img", "tar", "--format must be one of"),
])
def test_export_charliecloud_refuses_names_before_touching_the_engine(tmp_path, output, fmt, message):
    with pytest.raises(ExportError, match=message):
        export_charliecloud(None, plan("python"), str(tmp_path / output), fmt)


def test_export_charliecloud_never_replaces_a_folder_that_is_not_its_image(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ExportError, match="exists"):
        export_charliecloud(None, plan("python"), str(tmp_path / "data"))
    with pytest.raises(ExportError, match="not a dlenv Charliecloud image"):
        export_charliecloud(None, plan("python"), str(tmp_path / "data"), force=True)
