"""Stacks built on their parent's verified image (plan/layered.py), without the engine: which stacks
are layered, what their Dockerfile holds, how the content hash and the lock follow the parent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from builder.errors import LockError
from builder.names import PARENT_LABEL
from builder.plan import lockfile as L
from builder.plan import pins as P
from builder.plan.layered import layered_inputs
from builder.plan.plan import parent_of, plan

SHA = "a" * 64


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fake_lock_for(path: Path) -> L.Lock:
    """Write a lock with made-up pins for the stack at `path` (whole or layered) and return it."""
    p = plan(str(path))
    python = {}
    for step in P.pip_steps(p.resolved):
        if p.parent is not None and step.name != P.LEAF_STEP:
            continue
        python[step.name] = tuple(L.PythonPin(r.partition("==")[0], r.partition("==")[2] or "1.0",
                                              f"{r.partition('==')[0]}-1.0-py3-none-any.whl", SHA)
                                  for r in step.requirements)
    lock = L.Lock(stack=p.resolved.name, inputs=P.lock_inputs(p.resolved), platform={"python": "3.11.2"},
                  base={"packages": {}}, apt_build={}, apt_runtime={}, sources={}, python=python)
    if p.parent is not None:
        parent = parent_of(p.parent)
        lock = dataclasses.replace(lock, inputs=layered_inputs(p.resolved, parent),
                                   parent={"stack": parent.stack, "content_hash": parent.content_hash,
                                           "lock": parent.lock.digest})
    L.lock_path(path).write_text(L.dump(lock))
    return L.load(L.lock_path(path))


def test_a_project_builds_on_its_parents_image(tmp_path):
    stack = write(tmp_path / "dlenv.yaml", 'schema: 1\nname: proj\nextends: python\npython_packages: ["six==1.17.0"]\n'
                                           'apt_packages: [curl]\nenv: {A: "1"}\n')
    python = plan("python")
    p = plan(str(stack))
    assert p.parent is not None and p.parent.content_hash == python.content_hash
    froms = [line for line in p.context.dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM {python.hash_tag} AS build", f"FROM {python.hash_tag} AS runtime"]
    assert "dlenv/base" not in p.context.dockerfile          # nothing of the parent is rebuilt
    assert "apt-get install -y --no-install-recommends curl" in p.context.dockerfile
    assert f'{PARENT_LABEL}="{python.hash_tag}"' in p.context.dockerfile
    assert "dlenv-runtime/ld.so.conf" not in p.context.files  # the parent's loader configuration stays
    # the CA bundle and pip settings are in the build stage only
    runtime = p.context.dockerfile.split(" AS runtime", 1)[1]
    assert "ca.crt" not in runtime and "PIP_CERT" not in runtime


def test_stacks_with_components_and_catalog_stacks_stay_whole_builds(tmp_path):
    stack = write(tmp_path / "own.yaml", 'schema: 1\nname: own\nextends: python\ncomponents: {numpy: "1.26.4"}\n')
    assert plan(str(stack)).parent is None
    for name in ("python", "chainer", "chainermn", "datascience"):
        assert plan(name).parent is None


def test_a_parent_with_python_packages_of_its_own_gives_a_whole_build(tmp_path):
    stack = write(tmp_path / "dlenv.yaml", 'schema: 1\nname: proj\nextends: datascience\npython_packages: ["six==1.17.0"]\n')
    p = plan(str(stack))
    assert p.parent is None and "FROM dlenv/base:" in p.context.dockerfile


def test_the_content_hash_follows_the_parents_and_the_lock_names_the_parent(tmp_path):
    parent = write(tmp_path / "parent.yaml", 'schema: 1\nname: parent\nextends: python\nenv: {X: "1"}\n')
    child = write(tmp_path / "dlenv.yaml", 'schema: 1\nname: child\nextends: ./parent.yaml\n'
                                           'python_packages: ["six==1.17.0"]\n')
    fake_lock_for(parent)
    lock = fake_lock_for(child)
    before = plan(str(child))
    assert before.lock_state == "locked" and before.parent.resolved.name == "parent"
    assert lock.parent["content_hash"] == before.parent.content_hash
    assert "--require-hashes" in before.context.dockerfile
    assert [lk.stack for lk in before.parent_locks] == ["python", "parent"]
    # The parent's image changes (its ENV): the child's hash follows and its lock is stale, in one line.
    write(parent, 'schema: 1\nname: parent\nextends: python\nenv: {X: "2"}\n')
    after = plan(str(child))
    assert after.content_hash != before.content_hash
    assert after.lock_state == "stale"
    assert after.stale_reason.startswith("its parent parent changed (content hash ")


def test_a_parent_without_a_valid_lock_is_one_error(tmp_path):
    write(tmp_path / "parent.yaml", 'schema: 1\nname: parent\nextends: python\nenv: {X: "1"}\n')
    child = write(tmp_path / "dlenv.yaml", 'schema: 1\nname: child\nextends: ./parent.yaml\n')
    with pytest.raises(LockError, match="builds on the image of parent, whose lock .* is missing"):
        plan(str(child))


def test_a_layered_lock_round_trips_with_its_parent(tmp_path):
    stack = write(tmp_path / "dlenv.yaml", 'schema: 1\nname: proj\nextends: python\npython_packages: ["six==1.17.0"]\n')
    lock = fake_lock_for(stack)
    assert lock.parent["stack"] == "python"
    assert L.load(L.lock_path(stack)).digest == lock.digest
    data = yaml.safe_load(L.lock_path(stack).read_text())
    data["parent"]["content_hash"] = "not-a-hash"
    L.lock_path(stack).write_text(yaml.safe_dump(data))
    with pytest.raises(LockError, match="parent.content_hash: not a sha256"):
        L.load(L.lock_path(stack))
