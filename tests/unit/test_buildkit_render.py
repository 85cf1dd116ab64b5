"""The BuildKit engine without an engine: the Dockerfile variant (mounts added, CA bundle lines gone,
everything else as rendered), the content hash independent of the engine, the CLI probe, and the
build driver against fake CLIs (progress, failure, image id, interruption)."""

from __future__ import annotations

import os
import re
import stat
import textwrap
import time
from pathlib import Path

import pytest

from builder import paths
from builder.engine import buildkit as buildkit
from builder.plan import buildkit_variant
from builder.plan.plan import plan
from builder.engine.sdk import BuildProgress
from builder.errors import BuildError, EngineError, RenderError
from builder.spec.stack import catalog_stack_names

STACKS = catalog_stack_names(paths.stacks_dir())
MOUNT = re.compile(r"--mount=\S+ ")


def instructions(text: str) -> list[tuple[str, str]]:
    """(stage, instruction with continuation lines joined), comments and blank lines dropped."""
    out, stage = [], None
    for block in buildkit_variant._instructions(text):
        first = block[0]
        if not first.strip() or first.lstrip().startswith("#"):
            continue
        m = re.match(r"^FROM \S+ AS (\S+)", first)
        if m:
            stage = m.group(1)
        out.append((stage, "\n".join(block)))
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_variant_adds_mounts_and_changes_nothing_else(stack):
    p = plan(stack)
    canonical = p.context.dockerfile
    bk = buildkit_variant.variant(canonical, base=p.resolved.base)
    assert "ca.crt /etc/dlenv-build/ca.crt" not in bk and "[ -s /etc/dlenv-build/ca.crt ]" not in bk
    assert "PIP_NO_CACHE_DIR" not in bk and "rm -rf /var/lib/apt/lists" not in bk
    for stage, ins in instructions(bk):
        if not ins.startswith("RUN "):
            assert "--mount" not in ins
            continue
        apt, pip = "apt-get update" in ins or "apt-get source" in ins, "pip install" in ins
        assert ("target=/var/cache/apt,sharing=locked" in ins and "target=/var/lib/apt/lists,sharing=locked" in ins) == apt
        assert ("target=/root/.cache/pip" in ins) == (pip and stage == "build")
        assert ("type=secret,id=dlenv-ca,target=/etc/dlenv-build/ca.crt" in ins) == (pip and stage == "build")
    # Without the mount flags, every instruction is the canonical one (quoting intact), except the
    # ones the variant exists to change.
    dropped = ("COPY dlenv-build/ca.crt", "RUN [ -s /etc/dlenv-build/ca.crt ]")
    want = [(s, i.replace(" PIP_NO_CACHE_DIR=1", "")) for s, i in instructions(canonical) if not i.startswith(dropped)]
    got = [(s, MOUNT.sub("", i)) for s, i in instructions(bk)]
    assert len(got) == len(want)
    for (s1, a), (s2, b) in zip(got, want):
        assert s1 == s2
        if "rm -rf /var/lib/apt/lists" in b:
            b = re.sub(r" \\\n && rm -rf /var/lib/apt/lists/\*$", "", b)
            b = b.replace("\n && rm -rf /var/lib/apt/lists/* \\", "").replace("rm -rf /var/lib/apt/lists/* ", "rm -rf ")
            b = b.replace("\n && apt-get clean \\", "")   # the .debs stay in the cache mount
        assert a == b


@pytest.mark.parametrize("stack", STACKS)
def test_content_hash_and_label_do_not_depend_on_the_engine(stack, cli, monkeypatch):
    before = plan(stack).content_hash
    monkeypatch.setenv("DLENV_ENGINE", "buildkit")
    assert plan(stack).content_hash == before
    res = cli("render", stack, "--engine", "buildkit")
    assert res.exit_code == 0, res.output
    assert res.stdout == buildkit_variant.variant(plan(stack).context.dockerfile, base=plan(stack).resolved.base)
    # The label is filled from the same build argument by both variants.
    assert 'LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}"' in res.stdout


def test_without_a_bundle_pip_trusts_the_images_own_certificates():
    p = plan("chainer")
    bk = buildkit_variant.variant(p.context.dockerfile, base=p.resolved.base, ca_secret=False)
    assert "type=secret" not in bk and "/etc/dlenv-build/ca.crt" not in bk
    assert "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt " in bk
    assert "target=/root/.cache/pip" in bk


def test_registry_base_drops_docker_clean_in_the_build_stage_only():
    p = plan("chainer")
    assert "RUN rm -f /etc/apt/apt.conf.d/docker-clean" not in buildkit_variant.variant(
        p.context.dockerfile, base=p.resolved.base)  # minbase has none
    base = {"image": "debian:bookworm-slim"}
    bk = buildkit_variant.variant(p.context.dockerfile, base=base)
    stages = {s: [i for t, i in instructions(bk) if t == s] for s in ("build", "runtime")}
    assert stages["build"][2] == "RUN rm -f /etc/apt/apt.conf.d/docker-clean"
    assert not any("docker-clean" in i for i in stages["runtime"])
    assert "id=dlenv-apt-archives-img-" in bk and buildkit_variant.cache_key(base) != buildkit_variant.cache_key(p.resolved.base)


def test_a_template_change_the_variant_does_not_know_is_refused():
    p = plan("chainer")
    text = p.context.dockerfile.replace("COPY dlenv-build/ca.crt /etc/dlenv-build/ca.crt\n", "")
    with pytest.raises(RenderError, match="did not find the CA bundle"):
        buildkit_variant.variant(text, base=p.resolved.base)


def test_engine_setting_is_validated(cli):
    res = cli("build", "chainer", "--engine", "kaniko")
    assert res.exit_code != 0 and "kaniko" in res.output + res.stderr


# --- the CLI probe and the build driver, against fake CLIs ---------------------------------------

def fake_cli(folder: Path, name: str, script: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_cli_takes_the_first_client_that_builds_with_buildkit(tmp_path):
    refuses = fake_cli(tmp_path, "docker", """
        echo "ERROR: BuildKit is enabled but the buildx component is missing or broken." >&2; exit 1
    """)
    assert "BuildKit is enabled" in pytest.raises(
        EngineError, buildkit.find_cli, {"DLENV_BUILDKIT_CLI": str(refuses), "PATH": ""}).value.message
    works = fake_cli(tmp_path, "docker-bk", """
        [ "$DOCKER_BUILDKIT" = 1 ] && echo "      --secret stringArray   Secret file to expose to the build"
    """)
    assert buildkit.find_cli({"DLENV_BUILDKIT_CLI": str(works), "PATH": ""}) == str(works)


def test_find_cli_without_any_is_one_line_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(buildkit, "CLI_CANDIDATES", (str(tmp_path / "nothing"), "docker"))
    with pytest.raises(EngineError) as err:
        buildkit.find_cli({"PATH": str(tmp_path)})
    assert "no Docker CLI that builds with BuildKit" in err.value.message
    assert "--engine sdk" in err.value.hint and "\n" not in err.value.one_line()


PLAIN_FAIL = """
    echo '#1 [internal] load build definition from Dockerfile'
    echo '#4 [build 1/3] FROM docker.io/dlenv/base:x'
    echo '#7 [build 3/3] RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install nothere'
    echo '#7 1.234 ERROR: No matching distribution found for nothere'
    echo '#7 ERROR: executor failed running [/bin/bash -o pipefail -c pip install nothere]: exit code: 1'
    echo '------'
    echo 'error: failed to solve: rpc error: code = Unknown desc = executor failed running: exit code: 1'
    exit 1
"""


def test_failed_build_raises_the_sdk_build_error(tmp_path):
    cli = fake_cli(tmp_path, "docker", PLAIN_FAIL)
    seen = []
    log = tmp_path / "logs" / "x.log"
    with pytest.raises(BuildError) as err:
        buildkit.build(str(cli), tmp_path, "dlenv/x:1-candidate", {"DLENV_CONTENT_HASH": "abc"}, log,
                       on_progress=lambda p, line: seen.append((p.step, p.total, p.instruction)))
    e = err.value
    assert e.step.startswith("step 3/3: [build] RUN ") and "nothere" in e.step
    assert e.log_path == str(log) and "exit code: 1" in log.read_text()
    assert e.log_tail[-1].startswith("error: failed to solve")
    assert "nothere" in (e.hint or "")  # the SDK's pin hint reads the same lines
    assert (1, 3, "[build] FROM docker.io/dlenv/base:x") in seen


def test_build_passes_arguments_by_name_and_returns_the_image_id(tmp_path):
    cli = fake_cli(tmp_path, "docker", """
        printf '%s\\n' "$@" > "$(dirname "$0")/args"
        echo "PIP_INDEX_URL=$PIP_INDEX_URL BUILDKIT=$DOCKER_BUILDKIT" > "$(dirname "$0")/env"
        while [ $# -gt 0 ]; do [ "$1" = --iidfile ] && echo sha256:feed > "$2"; shift; done
        echo '#9 [runtime 2/2] COPY a b'
    """)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    image = buildkit.build(str(cli), tmp_path / "ctx", "dlenv/x:1-candidate",
                           {"DLENV_CONTENT_HASH": "abc", "PIP_INDEX_URL": "https://u:tok@idx.invalid/simple"},
                           tmp_path / "x.log", secret_file=bundle, nocache=True)
    assert image == "sha256:feed"
    args = (tmp_path / "args").read_text().split("\n")
    assert "--build-arg" in args and "PIP_INDEX_URL" in args and not any("tok@" in a for a in args)
    assert f"id=dlenv-ca,src={bundle}" in args and "--no-cache" in args and "--progress=plain" in args
    assert (tmp_path / "env").read_text().strip() == "PIP_INDEX_URL=https://u:tok@idx.invalid/simple BUILDKIT=1"


def _alive(pid: int) -> bool:
    for _ in range(50):   # an orphan is reaped by init shortly after its death
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat_ = Path(f"/proc/{pid}/stat")
        if stat_.exists() and stat_.read_text().split(") ")[-1].startswith("Z"):
            return False
        time.sleep(0.1)
    return True


def test_interrupt_stops_the_cli(tmp_path):
    cli = fake_cli(tmp_path, "docker", """
        echo $$ > "$(dirname "$0")/pid"
        sleep 300 &
        echo $! > "$(dirname "$0")/child"
        echo '#5 [build 2/6] RUN long'
        wait
    """)

    def interrupt(progress, line):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        buildkit.build(str(cli), tmp_path, "dlenv/x:1-candidate", {}, tmp_path / "x.log", on_progress=interrupt)
    assert time.monotonic() - started < 30
    for name in ("pid", "child"):   # the CLI and what it started
        pid = int((tmp_path / name).read_text())
        assert not _alive(pid), name


def test_buildprogress_is_the_sdk_type():
    assert buildkit.BuildProgress is BuildProgress
