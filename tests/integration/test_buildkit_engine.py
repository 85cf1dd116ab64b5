"""The BuildKit engine with the real engine: a small stack built with `--engine buildkit` is verified,
labelled with the SDK plan's content hash (so the SDK engine then has nothing to do), its layers and
those of its build stage hold no byte of the CA bundle, the apt cache mount keeps the .debs it
downloaded, and a SIGINT stops the CLI and the daemon's step and moves no tag.

Skips when this machine has no Docker CLI that builds with BuildKit (fails with DLENV_REQUIRE_ENGINE=1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from processes import processes_with

from builder.engine import buildkit as buildkit
from builder.plan import buildkit_variant
from builder.errors import EngineError
from security import scan_image

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="module")
def bk_cli():
    try:
        return buildkit.find_cli()
    except EngineError as exc:
        if os.environ.get("DLENV_REQUIRE_ENGINE") == "1":
            pytest.fail(f"DLENV_REQUIRE_ENGINE=1 but {exc.one_line()}", pytrace=False)
        pytest.skip(exc.one_line())


def write_stack(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dlenv.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def remove_repo(client, repo: str) -> None:
    for image in client.images.list(name=repo):
        for tag in image.tags:
            client.images.remove(tag, noprune=False)


def secret_bundle(tmp_path: Path) -> tuple[Path, str]:
    """The host's bundle with a fresh self-signed certificate appended (pip still loads it: the index
    stays reachable); a line of that certificate's body is the needle of the scan."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN=dlenv-bk-secret-{secrets.token_hex(8)}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    body = [ln for ln in cert.read_text().splitlines() if ln and not ln.startswith("-----")]
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((HOST_BUNDLE.read_text() if HOST_BUNDLE.exists() else "") + cert.read_text())
    return bundle, body[len(body) // 2]


def test_buildkit_build_verifies_shares_the_hash_and_keeps_the_bundle_out(bk_cli, docker_client, run_dlenv, tmp_path):
    repo = "dlenv/dlenv-itest-bk"
    project = tmp_path / "proj"
    write_stack(project, """
        schema: 1
        name: dlenv-itest-bk
        extends: python
        components: {python: "3.11"}   # a whole build: its apt steps use the cache mounts
        python_packages: ["six==1.16.0"]
    """)
    bundle, marker = secret_bundle(tmp_path)
    stage_tag = f"dlenv-test/bk-build-stage:{secrets.token_hex(6)}"
    remove_repo(docker_client, repo)
    try:
        # --no-cache: every step runs, and BuildKit starts the cache mounts empty too.
        res = run_dlenv("build", "--engine", "buildkit", "--no-cache", "--ca-bundle", str(bundle), cwd=project)
        assert res.returncode == 0, res.stderr
        assert "checks passed" in res.stdout and "[build] RUN" in res.stderr
        show = json.loads(run_dlenv("show", "--json", cwd=project, check=True).stdout)
        attrs = docker_client.api.inspect_image(f"{repo}:latest")
        assert attrs["Config"]["Labels"]["org.dlenv.content-hash"] == show["content_hash"]
        assert docker_client.api.inspect_image(show["image"])["Id"] == attrs["Id"]
        assert not [i for i in docker_client.images.list(name=repo) if any(t.endswith("-candidate") for t in i.tags)]
        # The SDK engine finds the same hash promoted: nothing to build.
        assert "is up to date" in run_dlenv("build", "--engine", "sdk", cwd=project, check=True).stdout

        # The runtime image: no byte of the bundle in any layer, the history, env or labels.
        findings, layers = scan_image(docker_client, f"{repo}:latest", [marker.encode()])
        assert layers >= 3 and not findings, findings

        # The build stage too (the SDK engine COPYs the bundle there): build it as an image with the same
        # variant, secret and caches, and scan it.
        from builder.engine.context import write_context
        from builder.plan.plan import plan
        p = plan(str(project / "dlenv.yaml"))
        context = tmp_path / "context"
        context.mkdir()
        write_context(p.context, context, None, dockerfile=buildkit_variant.variant(p.context.dockerfile, base=p.resolved.base))
        assert not (context / "dlenv-build" / "ca.crt").exists()
        subprocess.run([bk_cli, "build", "--progress=plain", "--target", "build", "-t", stage_tag,
                        "--secret", f"id=dlenv-ca,src={bundle}", "--build-arg", f"DLENV_CONTENT_HASH={p.content_hash}",
                        str(context)], env=dict(os.environ, DOCKER_BUILDKIT="1"), check=True, capture_output=True)
        findings, layers = scan_image(docker_client, stage_tag, [marker.encode()])
        assert layers >= 3 and not findings, findings
        out = docker_client.containers.run(stage_tag, ["bash", "-c", "wc -c < /etc/dlenv-build/ca.crt 2>/dev/null || echo absent"],
                                           remove=True).decode().strip()
        assert out in ("0", "absent")   # at most the empty mount point BuildKit leaves behind

        # The apt cache mount keeps .debs (no docker-clean in the way): the two stages' apt steps take
        # turns (sharing=locked) and the second finds archives the first downloaded.
        log = (tmp_path / "state" / "logs" / f"dlenv-itest-bk-{p.content_hash[:16]}.log").read_text()
        assert marker not in log
        partial = [(a, b) for a, b in re.findall(r"Need to get ([0-9.,]+ [kM]?B)/([0-9.,]+ [kM]?B) of archives", log)]
        assert partial, "no apt step found its archives in the cache mount"

        # Adding a package re-runs only the leaf pip step (and no apt step). Whether pip then finds the
        # first package in its cache mount depends on the index's cache headers: through this machine's
        # network path the index sends none and pip's HTTP cache stores nothing, so it is not asserted.
        # (Not --no-cache: BuildKit then also starts every cache mount empty.)
        (project / "dlenv.yaml").write_text((project / "dlenv.yaml").read_text().replace(
            '["six==1.16.0"]', '["six==1.16.0", "packaging==24.1"]'))
        res = run_dlenv("build", "--engine", "buildkit", "--relock", "--no-verify", "--ca-bundle", str(bundle), cwd=project)
        assert res.returncode == 0, res.stderr
        p2 = plan(str(project / "dlenv.yaml"))
        log = (tmp_path / "state" / "logs" / f"dlenv-itest-bk-{p2.content_hash[:16]}.log").read_text()
        assert "[build 6/6] RUN" in log   # the leaf step, run or CACHED from an earlier run of this test
        assert "Need to get" not in log, "an apt step ran again"
    finally:
        remove_repo(docker_client, repo)
        remove_repo(docker_client, stage_tag.split(":")[0])


def test_sigint_stops_the_cli_and_the_step_and_moves_nothing(bk_cli, docker_client, dlenv_path, tmp_path):
    repo = "dlenv/dlenv-itest-bk-sigint"
    token = f"dlenv-bk-sleep-{secrets.token_hex(6)}"
    project = tmp_path / "proj"
    write_stack(project, f"""
        schema: 1
        name: dlenv-itest-bk-sigint
        extends: python
        run: ["echo {token} && sleep 300"]
    """)
    remove_repo(docker_client, repo)
    env = dict(os.environ, DLENV_STATE_DIR=str(tmp_path / "state"), NO_COLOR="1")
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err_file:
        proc = subprocess.Popen([dlenv_path, "build", "--engine", "buildkit", "--no-cache"], stdout=subprocess.PIPE,
                                stderr=err_file, text=True, env=env, cwd=project)
    try:
        deadline = time.monotonic() + 900
        while not processes_with(token) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)   # until the daemon runs the step (the CLI shortens the step line)
        assert processes_with(token), errors.read_text()
        cli_pids = [pid for pid in processes_with("dlenv-itest-bk-sigint:") if pid != proc.pid]
        assert cli_pids, "the BuildKit CLI is not running"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        err = errors.read_text()
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert not {t for i in docker_client.images.list(name=repo) for t in i.tags}
        for _ in range(60):   # the daemon cancels the step when the client goes away
            if not processes_with(token):
                break
            time.sleep(0.5)
        assert not processes_with(token), "the step still runs in the daemon"
        assert not [pid for pid in cli_pids if Path(f"/proc/{pid}").exists()], "the CLI still runs"
    finally:
        if proc.poll() is None:
            proc.kill()
        remove_repo(docker_client, repo)
