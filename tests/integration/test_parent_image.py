"""A project builds on its parent's verified image, also when that parent was only pulled: the parent
is built and pushed to a real registry (Debian's docker-registry on 127.0.0.1), every local tag of
it is removed, and `dlenv build` of a project extending it pulls the parent by its content hash and
builds only the project's own layers on top. The engine and the CLI are real."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from registry_fixture import Registry, ensure_tools  # noqa: E402

from builder.names import HASH_LABEL, PARENT_LABEL  # noqa: E402

pytestmark = pytest.mark.engine


def _dlenv_argv() -> list[str]:
    candidate = Path(sys.executable).parent / "dlenv"
    return [str(candidate) if candidate.exists() else (shutil.which("dlenv") or "dlenv")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    ensure_tools()
    root = tmp_path_factory.mktemp("registry-parent")
    reg = Registry(root).start()
    yield reg
    reg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dlenv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DLENV_REGISTRY", "DOCKER_CONFIG")}
    env.update(NO_COLOR="1", COLUMNS="200", DLENV_STATE_DIR=str(tmp_path / "state"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg"))

    def run(*args, cwd, timeout=1800):
        return subprocess.run([*_dlenv_argv(), *args], capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout)
    return run


def _remove_repo(client, repo: str) -> None:
    for image in client.images.list(name=repo):
        for tag in image.tags:
            if tag.rpartition(":")[0] == repo:
                try:
                    client.images.remove(tag)
                except Exception:  # noqa: BLE001 - already gone
                    pass


def test_a_project_builds_on_a_parent_pulled_from_the_registry(docker_client, registry, dlenv, tmp_path):
    suffix = secrets.token_hex(4)
    parent_name, child_name = f"dlenv-itest-parent-{suffix}", f"dlenv-itest-child-{suffix}"
    folder = tmp_path / "repo"
    folder.mkdir()
    # The parent is a whole build (it declares a component); the project only adds a package and a file.
    (folder / "parent.yaml").write_text(textwrap.dedent(f"""\
        schema: 1
        name: {parent_name}
        extends: python
        components: {{python: "3.11"}}
        env: {{PARENT_MARK: "{suffix}"}}
        """))
    (folder / "dlenv.yaml").write_text(textwrap.dedent(f"""\
        schema: 1
        name: {child_name}
        extends: ./parent.yaml
        python_packages: ["six==1.17.0"]
        files: [hello.py]
        checks:
          - name: the project's package imports on top of the parent
            python: "import six, os; print(six.__version__, os.environ['PARENT_MARK'])"
            contains: "1.17.0 {suffix}"
        """))
    (folder / "hello.py").write_text("print('hello')\n")
    try:
        built = dlenv("build", "parent.yaml", cwd=folder)
        assert built.returncode == 0, built.stderr[-3000:]
        parent_show = json.loads(dlenv("show", "parent.yaml", "--json", cwd=folder).stdout)
        parent_tag = parent_show["image"]
        parent_id = docker_client.images.get(parent_tag).id
        pushed = dlenv("push", "parent.yaml", "--registry", registry.address, cwd=folder)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        # A colleague's machine: no local image of the parent at all.
        _remove_repo(docker_client, f"dlenv/{parent_name}")
        _remove_repo(docker_client, f"{registry.address}/dlenv/{parent_name}")
        assert not docker_client.images.list(name=f"dlenv/{parent_name}")

        child = dlenv("build", "--registry", registry.address, cwd=folder)
        assert child.returncode == 0, child.stderr[-3000:]
        assert f"builds on {parent_tag} (pulled from {registry.address})" in child.stderr
        assert "checks passed" in child.stdout
        # Pulled by content hash: the very image that was pushed, and nothing of it was built again.
        assert docker_client.images.get(parent_tag).id == parent_id
        steps = [line for line in child.stderr.splitlines() if line.startswith("step ")]
        assert steps and all("python3-venv" not in s and "useradd" not in s for s in steps), steps
        assert any(s.endswith(f"FROM {parent_tag} AS runtime") for s in steps), steps
        show = json.loads(dlenv("show", "--json", cwd=folder).stdout)
        labels = docker_client.images.get(show["image"]).labels
        assert labels[PARENT_LABEL] == parent_tag and labels[HASH_LABEL] == show["content_hash"]
        lock = (folder / "dlenv.lock").read_text()
        assert f"content_hash: {parent_show['content_hash']}" in lock
        # Built on the parent's image: a second build is a no-op, and the parent is not needed for it.
        again = dlenv("build", cwd=folder)
        assert again.returncode == 0 and "is up to date" in again.stdout
    finally:
        for repo in (f"dlenv/{child_name}", f"dlenv/{parent_name}", f"{registry.address}/dlenv/{parent_name}"):
            _remove_repo(docker_client, repo)
