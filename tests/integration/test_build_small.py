"""Real engine, small stacks: build, no-op, verify, CA bundle secrecy, failing step, failing check.

Each test names its stacks `dlenv-itest-*` and removes their images at the end.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

from builder.names import PACKAGE_REPO_URL

ROOT = Path(__file__).resolve().parents[2]


def write_stack(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def image_id(client, ref: str):
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture
def cleanup_repo(docker_client):
    repos = []
    yield repos.append
    for repo in repos:
        for image in docker_client.images.list(name=repo):
            for tag in image.tags:
                docker_client.images.remove(tag, noprune=False)


def test_python_stack_builds_verifies_and_noops(docker_client, run_dlenv, tmp_path, cleanup_repo):
    stack = write_stack(tmp_path, "itest-python", """
        schema: 1
        name: dlenv-itest-python
        extends: python
        env:
          GREETING: "hello $USER \\"quoted\\""
        checks:
          - name: env value arrives literally
            command: printenv GREETING
            contains: 'hello $USER "quoted"'
    """)
    cleanup_repo("dlenv/dlenv-itest-python")
    first = run_dlenv("build", str(stack))
    assert first.returncode == 0, first.stderr
    assert "built dlenv/dlenv-itest-python:" in first.stdout
    show = json.loads(run_dlenv("show", str(stack), "--json", check=True).stdout)
    promoted = show["image"]
    attrs = docker_client.api.inspect_image(promoted)
    labels = attrs["Config"]["Labels"]
    assert labels["org.dlenv.content-hash"] == show["content_hash"]
    assert labels["org.dlenv.component.python"] == "3.11"
    assert attrs["Config"]["User"] not in ("", "0", "root", "0:0")
    assert image_id(docker_client, "dlenv/dlenv-itest-python:latest") == attrs["Id"]
    assert image_id(docker_client, promoted + "-candidate") is None

    second = run_dlenv("build", str(stack))
    assert second.returncode == 0, second.stderr
    assert "is up to date" in second.stdout

    verify = run_dlenv("verify", str(stack), "--json")
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["passed"], verify.stdout
    names = {c["name"] for c in report["checks"]}
    assert {"default user is not root", "env value arrives literally", "python is 3.11"} <= names
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=verify"})


def _real_cert(tmp_path: Path) -> tuple[str, str]:
    """A freshly generated self-signed certificate (valid PEM, so pip still loads the bundle) and a
    line of its body, which is unique to this run and serves as the needle of the scan."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN=dlenv-secret-{secrets.token_hex(8)}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    text = cert.read_text()
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    return text, body[len(body) // 2]


def test_ca_bundle_reaches_no_layer_history_env_or_label(docker_client, run_dlenv, tmp_path, cleanup_repo):
    cert, marker = _real_cert(tmp_path)
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = tmp_path / "extra-ca.pem"
    # The secret is appended to a real bundle, so it must be found by content, not by file name.
    bundle.write_text((host_bundle.read_text() if host_bundle.exists() else "") + cert)
    stack = write_stack(tmp_path, "itest-ca", """
        schema: 1
        name: dlenv-itest-ca
        extends: python
        python_packages: ["six==1.16.0"]
    """)
    cleanup_repo("dlenv/dlenv-itest-ca")
    result = run_dlenv("build", str(stack), "--ca-bundle", str(bundle))
    assert result.returncode == 0, result.stderr
    ref = "dlenv/dlenv-itest-ca:latest"
    attrs = docker_client.api.inspect_image(ref)
    assert marker not in json.dumps(attrs)
    assert marker not in json.dumps(docker_client.api.history(ref))
    saved = b"".join(docker_client.images.get(ref).save(named=True))
    layers_scanned = 0
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            assert marker.encode() not in data, f"CA marker found in {member.name}"
            if member.name.endswith("layer.tar"):
                layers_scanned += 1
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for entry in layer.getmembers():
                        assert "dlenv-build" not in entry.name, entry.name
    assert layers_scanned >= 3


def test_failing_step_keeps_tags_and_leaves_no_containers(docker_client, run_dlenv, tmp_path, cleanup_repo):
    cleanup_repo("dlenv/dlenv-itest-fail")
    good = write_stack(tmp_path / "good", "stack", """
        schema: 1
        name: dlenv-itest-fail
        extends: python
    """)
    assert run_dlenv("build", str(good)).returncode == 0
    before = image_id(docker_client, "dlenv/dlenv-itest-fail:latest")
    assert before
    containers_before = {c.id for c in docker_client.containers.list(all=True)}
    bad = write_stack(tmp_path / "bad", "stack", """
        schema: 1
        name: dlenv-itest-fail
        extends: python
        run: ["echo dlenv-step-output; exit 3"]
    """)
    result = run_dlenv("build", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "dlenv: error: build failed at step" in result.stderr and "non-zero code: 3" in result.stderr
    assert "dlenv-step-output" in result.stderr          # the step's own output, in the log tail
    assert "full build log:" in result.stderr
    log_path = result.stderr.split("full build log:")[1].split()[0]
    assert Path(log_path).is_file()
    assert image_id(docker_client, "dlenv/dlenv-itest-fail:latest") == before
    assert {c.id for c in docker_client.containers.list(all=True)} == containers_before
    # An unknown Debian package now fails while locking, before any build, in one line naming it.
    worse = write_stack(tmp_path / "worse", "stack", """
        schema: 1
        name: dlenv-itest-fail
        extends: python
        apt_packages: [dlenv-no-such-package]
    """)
    result = run_dlenv("build", str(worse))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("dlenv: error:")]
    assert len(errors) == 1 and "Unable to locate package dlenv-no-such-package" in errors[0]
    assert not (tmp_path / "worse" / "stack.lock").exists()
    assert image_id(docker_client, "dlenv/dlenv-itest-fail:latest") == before
    assert {c.id for c in docker_client.containers.list(all=True)} == containers_before


def test_failing_check_blocks_promotion(docker_client, run_dlenv, tmp_path, cleanup_repo):
    cleanup_repo("dlenv/dlenv-itest-check")
    good = write_stack(tmp_path / "good", "stack", """
        schema: 1
        name: dlenv-itest-check
        extends: python
    """)
    assert run_dlenv("build", str(good)).returncode == 0
    before = image_id(docker_client, "dlenv/dlenv-itest-check:latest")
    bad = write_stack(tmp_path / "bad", "stack", """
        schema: 1
        name: dlenv-itest-check
        extends: python
        env: {VARIANT: "candidate"}   # another image: checks alone do not change the content hash
        checks:
          - name: deliberately failing
            command: echo about to fail; exit 3
    """)
    result = run_dlenv("build", str(bad))
    assert result.returncode == 1
    assert "deliberately failing" in result.stderr and "exit status 3" in result.stderr
    assert "were not moved" in result.stderr
    assert image_id(docker_client, "dlenv/dlenv-itest-check:latest") == before
    show = json.loads(run_dlenv("show", str(bad), "--json", check=True).stdout)
    assert image_id(docker_client, show["image"]) is None
    assert image_id(docker_client, show["image"] + "-candidate") is not None


def test_unreachable_engine_is_one_clear_line(run_dlenv):
    result = run_dlenv("build", "python", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot reach the Docker engine" in lines[0]
    assert "Traceback" not in result.stderr


def test_hadolint_clean():
    proc = subprocess.run([str(Path(__import__("sys").executable).parent / "python"),
                           str(ROOT / "scripts" / "lint-dockerfiles.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_index_token_given_to_the_build_reaches_no_layer(docker_client, run_dlenv, tmp_path, cleanup_repo):
    """A pip index URL with credentials is the host's business only: the package store fetches the lock's
    Python files with it, and the build's pip reads dlenv's repository (its index URL is dlenv's), so the
    promoted image carries the token in no layer, history entry, env or label."""
    from security import scan_image

    token = "tok" + secrets.token_hex(16)
    stack = write_stack(tmp_path, "itest-token", f"""
        schema: 1
        name: dlenv-itest-token
        extends: python
        components: {{python: "3.11"}}   # a whole build: its build stage is the one that gets the argument
        env: {{RUN: "{secrets.token_hex(4)}"}}
    """)
    cleanup_repo("dlenv/dlenv-itest-token")
    # 127.0.0.1:9 answers nothing; this stack pins no Python file, so the store never asks it.
    result = run_dlenv("build", str(stack), env={"PIP_EXTRA_INDEX_URL": f"https://ci:{token}@127.0.0.1:9/simple"})
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr
    findings, layers = scan_image(docker_client, "dlenv/dlenv-itest-token:latest", [token.encode()])
    assert layers >= 3 and not findings, findings

    # Positive control for the scan: the base's apt sources (a file of the first layer) are found.
    control, _ = scan_image(docker_client, "dlenv/dlenv-itest-token:latest", [PACKAGE_REPO_URL.encode()])
    assert control, "the scan found not even the base's apt sources"


def test_gc_removes_candidates_and_old_hash_tags_only(docker_client, run_dlenv, tmp_path, cleanup_repo):
    cleanup_repo("dlenv/dlenv-itest-gc")
    refs = []
    for variant in ("old", "new"):
        stack = write_stack(tmp_path / variant, "stack", f"""
            schema: 1
            name: dlenv-itest-gc
            extends: python
            env: {{VARIANT: "{variant}-{secrets.token_hex(4)}"}}
        """)
        assert run_dlenv("build", str(stack)).returncode == 0
        refs.append(json.loads(run_dlenv("show", str(stack), "--json", check=True).stdout)["image"])
        if variant == "old":   # a candidate left over, tagged before the newer build (gc orders by tag time)
            docker_client.api.tag(refs[0], "dlenv/dlenv-itest-gc", refs[0].split(":")[1] + "-candidate")
    old, new = refs
    latest_before = {t for i in docker_client.images.list(name="dlenv/*") for t in i.tags if t.endswith(":latest")}
    dry = run_dlenv("gc", "--dry-run")
    assert dry.returncode == 0 and f"would remove {old}" in dry.stderr
    assert image_id(docker_client, old) is not None  # a dry run removes nothing
    result = run_dlenv("gc")
    assert result.returncode == 0, result.stderr
    assert image_id(docker_client, old) is None and image_id(docker_client, old + "-candidate") is None
    assert image_id(docker_client, new) == image_id(docker_client, "dlenv/dlenv-itest-gc:latest") is not None
    assert latest_before <= {t for i in docker_client.images.list(name="dlenv/*") for t in i.tags}
