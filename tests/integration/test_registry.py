"""Push and pull through a real registry (Debian's docker-registry on 127.0.0.1, started here), with
the real engine and the real CLI in a subprocess.

Cases: build -> push -> remove the local image -> pull gives back the same image id and tags;
basic auth with credentials from the environment and from a Docker config, and without them
(unauthorized, the password in no output); registry down; a hash the registry lacks; a different
image under the stack's name; a stale local image never reported as pulled; the registry
SIGKILLed while a multi-layer pull is downloading (through a throttling proxy, so the kill
surely lands mid-download; the engine then retries for about 75 s before it gives up).

Stacks are named `dlenv-itest-reg-<random>`; every test removes the images and tags it made, and
the registries' storage goes with their fixture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from registry_fixture import Registry, ThrottledProxy, ensure_tools, free_port, write_htpasswd  # noqa: E402

from builder.names import HASH_LABEL  # noqa: E402
from builder.plan.plan import Plan, plan as make_plan
from builder.engine.registry import remote_ref  # noqa: E402

USER = "dlenv-itest"
PASSWORD = "pw-" + secrets.token_hex(12)


def dlenv_argv() -> list[str]:
    candidate = Path(sys.executable).parent / "dlenv"
    return [str(candidate) if candidate.exists() else (shutil.which("dlenv") or "dlenv")]


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def registry_tools():
    ensure_tools()


@pytest.fixture(scope="module")
def plain(registry_tools, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-plain")
    reg = Registry(root).start()
    yield reg
    reg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def secured(registry_tools, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-auth")
    write_htpasswd(root / "htpasswd", USER, PASSWORD)
    reg = Registry(root, htpasswd=root / "htpasswd").start()
    yield reg
    reg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dlenv(tmp_path):
    """Run the CLI isolated from the caller's registry settings and Docker credentials."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DLENV_REGISTRY", "DLENV_REGISTRY_USER", "DLENV_REGISTRY_PASSWORD", "DOCKER_CONFIG")}
    (tmp_path / "docker-config").mkdir()
    base_env = dict(clean, NO_COLOR="1", COLUMNS="200", DLENV_STATE_DIR=str(tmp_path / "state"),
                    XDG_CONFIG_HOME=str(tmp_path / "xdg"), DOCKER_CONFIG=str(tmp_path / "docker-config"))
    calls = []

    def run(*args, env=None, timeout=300):
        full = dict(base_env, **(env or {}))
        proc = subprocess.run([*dlenv_argv(), *args], capture_output=True, text=True, env=full, timeout=timeout,
                              cwd=tmp_path)
        calls.append(proc)
        return proc

    run.env = base_env
    run.calls = calls
    return run


class Janitor:
    """Removes every tag under the repositories it was given, then the images it was given."""

    def __init__(self, client):
        self.client = client
        self.repos: set = set()
        self.ids: set = set()

    def repo(self, ref: str) -> None:
        self.repos.add(ref.rpartition(":")[0] if ":" in ref.rsplit("/", 1)[-1] else ref)

    def clean(self) -> None:
        for repo in self.repos:
            for image in self.client.images.list(name=repo):
                for t in image.tags:
                    if t.rpartition(":")[0] == repo:
                        _remove(self.client, t)
        for image_id in self.ids:
            _remove(self.client, image_id)


def _remove(client, ref: str) -> None:
    try:
        client.images.remove(ref)
    except Exception:  # noqa: BLE001 - already gone, or still used by a tag someone else owns
        pass


@pytest.fixture
def janitor(docker_client):
    j = Janitor(docker_client)
    yield j
    j.clean()


@dataclass
class Stack:
    path: Path
    plan: Plan

    @property
    def name(self) -> str:
        return self.plan.resolved.name

    @property
    def hash16(self) -> str:
        return self.plan.content_hash[:16]


def new_stack(folder: Path) -> Stack:
    """A stack file of its own (a unique name and env value, so a unique content hash)."""
    token = secrets.token_hex(4)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"reg-{token}.yaml"
    path.write_text(textwrap.dedent(f"""
        schema: 1
        name: dlenv-itest-reg-{token}
        extends: python
        env: {{REGISTRY_TEST_TOKEN: "{token}"}}
    """).lstrip())
    return Stack(path, make_plan(str(path)))


def scratch_image(client, folder: Path, tag: str, label: str | None, layer_sizes=(64,)) -> str:
    """An image made here from nothing: one layer of random bytes per size, and the content label.
    Stands in for a built stack where the test is about the registry, not the build."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["FROM scratch"]
    for i, size in enumerate(layer_sizes):
        (folder / f"blob{i}").write_bytes(os.urandom(size))
        lines.append(f"COPY blob{i} /blob{i}")
    lines.append('LABEL org.dlenv.itest="registry"' + (f' {HASH_LABEL}="{label}"' if label else ""))
    (folder / "Dockerfile").write_text("\n".join(lines) + "\n")
    for chunk in client.api.build(path=str(folder), tag=tag, rm=True, forcerm=True, decode=True):
        assert "error" not in chunk, chunk
    return client.images.get(tag).id


def image_id(client, ref: str):
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001
        return None


def tag(client, image: str, ref: str) -> None:
    repo, _, t = ref.rpartition(":")
    assert client.api.tag(image, repo, t, force=True)


def assert_one_line_error(proc, *needles: str, progress: bool = False) -> str:
    """Exit 1 and a single line on stderr (besides per-layer progress lines when `progress`)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if progress:
        lines = [ln for ln in lines if not re.match(r"^(push|pull) layer [0-9a-f]{12}: ", ln)]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def built(docker_client, tmp_path_factory):
    """One real `dlenv build` of a small stack, shared by the round trip."""
    folder = tmp_path_factory.mktemp("built")
    stack = new_stack(folder)
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(folder / "state"))
    dlenv_bin = Path(sys.executable).parent / "dlenv"
    proc = subprocess.run([str(dlenv_bin) if dlenv_bin.exists() else "dlenv", "build", str(stack.path)],
                          capture_output=True, text=True, env=env, timeout=1800)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stack = Stack(stack.path, make_plan(str(stack.path)))  # the build wrote its lock: the hash is the locked one
        assert stack.plan.lock_state == "locked"
        yield stack
    finally:
        j = Janitor(docker_client)
        j.repo(stack.plan.repo)
        j.clean()


# -------------------------------------------------------------------------------------------- tests

def test_round_trip_build_push_remove_pull_restores_the_image(docker_client, built, plain, dlenv):
    p = built.plan
    built_id = image_id(docker_client, p.hash_tag)
    assert built_id and image_id(docker_client, p.latest_tag) == built_id
    remote = remote_ref(p, plain.address)
    assert remote == f"{plain.address}/dlenv/{built.name}:{built.hash16}"

    pushed = dlenv("push", str(built.path), "--registry", plain.address)
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed {p.hash_tag} to {remote}" in pushed.stdout
    assert re.search(r"^push layer [0-9a-f]{12}: Pushed$", pushed.stderr, re.M), pushed.stderr
    assert plain.has_manifest(f"dlenv/{built.name}", built.hash16)
    assert image_id(docker_client, remote) is None, "the temporary remote tag was left behind"

    docker_client.images.remove(p.latest_tag)
    docker_client.images.remove(p.hash_tag)
    assert image_id(docker_client, built_id) is None, "the built image is still here"

    pulled = dlenv("pull", str(built.path), env={"DLENV_REGISTRY": plain.address})  # setting, not option
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulled {p.hash_tag} from {remote}" in pulled.stdout and built_id in pulled.stdout
    assert re.search(r"^pull layer [0-9a-f]{12}: (Pull complete|Already exists)$", pulled.stderr, re.M)
    assert image_id(docker_client, p.hash_tag) == built_id
    assert image_id(docker_client, p.latest_tag) == built_id
    assert docker_client.api.inspect_image(p.hash_tag)["Config"]["Labels"][HASH_LABEL] == p.content_hash
    assert image_id(docker_client, remote) is None

    again = dlenv("-q", "pull", str(built.path), "--registry", plain.address)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert "pulled" not in again.stdout and "already" in again.stdout and built_id in again.stdout

    # `dlenv build` with a registry configured pulls this hash instead of building it.
    docker_client.images.remove(p.latest_tag)
    docker_client.images.remove(p.hash_tag)
    rebuilt = dlenv("build", str(built.path), env={"DLENV_REGISTRY": plain.address})
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"pulled {p.hash_tag} from {plain.address} instead of building" in rebuilt.stdout
    assert "step " not in rebuilt.stderr  # no Dockerfile step ran
    assert image_id(docker_client, p.hash_tag) == built_id == image_id(docker_client, p.latest_tag)
    noop = dlenv("build", str(built.path), "--registry", plain.address)
    assert noop.returncode == 0 and "is up to date" in noop.stdout


def test_basic_auth_with_environment_credentials(docker_client, secured, dlenv, tmp_path, janitor):
    stack = new_stack(tmp_path)
    p = stack.plan
    janitor.repo(p.repo)
    janitor.repo(remote_ref(p, secured.address))
    made = scratch_image(docker_client, tmp_path / "img", p.hash_tag, p.content_hash, (4096, 2048))
    tag(docker_client, made, p.latest_tag)
    creds = {"DLENV_REGISTRY_USER": USER, "DLENV_REGISTRY_PASSWORD": PASSWORD}

    anonymous = dlenv("push", str(stack.path), "--registry", secured.address)
    line = assert_one_line_error(anonymous, "unauthorized", f"docker login {secured.address}",
                                 "DLENV_REGISTRY_USER")
    assert "refused the push" in line
    assert not secured.has_manifest(f"dlenv/{stack.name}", stack.hash16, auth=(USER, PASSWORD))

    pushed = dlenv("push", str(stack.path), "--registry", secured.address, env=creds)
    assert pushed.returncode == 0, pushed.stderr
    assert secured.has_manifest(f"dlenv/{stack.name}", stack.hash16, auth=(USER, PASSWORD))

    docker_client.images.remove(p.latest_tag)
    docker_client.images.remove(p.hash_tag)
    anonymous = dlenv("pull", str(stack.path), "--registry", secured.address)
    assert_one_line_error(anonymous, "unauthorized", f"docker login {secured.address}")
    assert image_id(docker_client, p.hash_tag) is None

    wrong = dlenv("pull", str(stack.path), "--registry", secured.address,
                  env={**creds, "DLENV_REGISTRY_PASSWORD": "wrong-" + PASSWORD})
    assert_one_line_error(wrong, "unauthorized", "check DLENV_REGISTRY_USER and DLENV_REGISTRY_PASSWORD")
    debug = dlenv("--debug", "pull", str(stack.path), "--registry", secured.address,
                  env={**creds, "DLENV_REGISTRY_PASSWORD": "wrong-" + PASSWORD})
    assert debug.returncode != 0 and "RegistryError" in debug.stderr

    half = dlenv("pull", str(stack.path), "--registry", secured.address, env={"DLENV_REGISTRY_USER": USER})
    assert_one_line_error(half, "DLENV_REGISTRY_PASSWORD is not set")

    pulled = dlenv("-q", "pull", str(stack.path), "--registry", secured.address, env=creds)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr == "" and f"pulled {p.hash_tag}" in pulled.stdout
    assert image_id(docker_client, p.hash_tag) == made == image_id(docker_client, p.latest_tag)

    encoded = [base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), PASSWORD]
    for proc in dlenv.calls:
        for secret in encoded:
            assert secret not in proc.stdout + proc.stderr, proc.args


def test_basic_auth_from_the_docker_config(docker_client, secured, dlenv, tmp_path, janitor):
    """No DLENV_REGISTRY_* variables: docker-py sends what $DOCKER_CONFIG/config.json holds for the
    host, as `docker login HOST` writes it. On a terminal the bars are drawn (TTY_COMPATIBLE=1)."""
    stack = new_stack(tmp_path)
    p = stack.plan
    janitor.repo(p.repo)
    janitor.repo(remote_ref(p, secured.address))
    made = scratch_image(docker_client, tmp_path / "img", p.hash_tag, p.content_hash, (8192,))
    config = Path(dlenv.env["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {secured.address: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))

    pushed = dlenv("push", str(stack.path), "--registry", secured.address, env={"TTY_COMPATIBLE": "1"})
    assert pushed.returncode == 0, pushed.stderr
    docker_client.images.remove(p.hash_tag)
    pulled = dlenv("pull", str(stack.path), "--registry", secured.address, env={"TTY_COMPATIBLE": "1"})
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulled {p.hash_tag}" in pulled.stdout
    assert image_id(docker_client, p.hash_tag) == made
    for proc in dlenv.calls:
        assert PASSWORD not in proc.stdout + proc.stderr


def test_registry_down_is_one_clear_line(docker_client, dlenv, tmp_path, janitor):
    stack = new_stack(tmp_path)
    p = stack.plan
    janitor.repo(p.repo)
    made = scratch_image(docker_client, tmp_path / "img", p.hash_tag, p.content_hash)
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    janitor.repo(remote_ref(p, nowhere))
    for command in ("push", "pull"):
        proc = dlenv(command, str(stack.path), "--registry", nowhere)
        assert_one_line_error(proc, f"registry {nowhere} is unreachable", "connection refused")
        assert proc.stdout == ""
    assert image_id(docker_client, p.hash_tag) == made
    assert image_id(docker_client, remote_ref(p, nowhere)) is None


def test_stale_local_image_is_never_reported_as_pulled(docker_client, plain, dlenv, tmp_path, janitor):
    """The stack's tags (and the registry name, as an earlier pull would leave it) point at an old
    image. Neither a dead registry nor one that lacks the hash may make it look pulled."""
    stack = new_stack(tmp_path)
    p = stack.plan
    janitor.repo(p.repo)
    stale = scratch_image(docker_client, tmp_path / "img", p.hash_tag, p.content_hash)
    tag(docker_client, stale, p.latest_tag)
    nowhere = f"127.0.0.1:{free_port()}"
    for reg in (nowhere, plain.address):
        janitor.repo(remote_ref(p, reg))
        tag(docker_client, stale, remote_ref(p, reg))

    down = dlenv("pull", str(stack.path), "--registry", nowhere)
    assert_one_line_error(down, "unreachable")
    missing = dlenv("pull", str(stack.path), "--registry", plain.address)
    assert_one_line_error(missing, f"{remote_ref(p, plain.address)} is not in the registry", "dlenv push")
    for proc in (down, missing):
        assert proc.stdout == "" and "pulled" not in proc.stderr
    for ref in (p.hash_tag, p.latest_tag, remote_ref(p, nowhere), remote_ref(p, plain.address)):
        assert image_id(docker_client, ref) == stale, ref


def test_a_different_image_under_the_name_is_refused(docker_client, plain, dlenv, tmp_path, janitor):
    stack = new_stack(tmp_path)
    p = stack.plan
    remote = remote_ref(p, plain.address)
    janitor.repo(p.repo)
    janitor.repo(remote)
    other = scratch_image(docker_client, tmp_path / "img", remote, "0" * 64)
    janitor.ids.add(other)
    repo, _, t = remote.rpartition(":")
    for chunk in docker_client.api.push(repo, t, stream=True, decode=True):
        assert "error" not in chunk, chunk
    docker_client.images.remove(remote)
    assert image_id(docker_client, other) is None

    proc = dlenv("pull", str(stack.path), "--registry", plain.address)
    assert_one_line_error(proc, f"the registry holds a different image under {remote}", "0000000000000000",
                          progress=True)
    assert "pulled" not in proc.stdout
    assert image_id(docker_client, p.hash_tag) is None and image_id(docker_client, p.latest_tag) is None
    assert image_id(docker_client, remote) is None and image_id(docker_client, other) is None


def test_registry_killed_mid_pull_fails_cleanly(docker_client, registry_tools, dlenv, tmp_path, janitor):
    stack = new_stack(tmp_path)
    p = stack.plan
    reg = Registry(tmp_path / "registry").start()
    proxy = ThrottledProxy(reg.port)
    remote = remote_ref(p, proxy.address)
    janitor.repo(p.repo)
    janitor.repo(remote)
    try:
        big = scratch_image(docker_client, tmp_path / "big", p.hash_tag, p.content_hash, (24_000_000,) * 3)
        janitor.ids.add(big)
        pushed = dlenv("push", str(stack.path), "--registry", proxy.address)
        assert pushed.returncode == 0, pushed.stderr
        assert "3 layers sent" in pushed.stdout
        # The stack's tags now name an older image; the big one is gone here, so the pull must download.
        stale = scratch_image(docker_client, tmp_path / "stale", p.hash_tag, p.content_hash)
        tag(docker_client, stale, p.latest_tag)
        docker_client.images.remove(big)
        assert image_id(docker_client, big) is None

        proxy.rate = 2_000_000  # bytes/s per connection: 12 s per layer, so the kill lands mid-download
        proc = subprocess.Popen([*dlenv_argv(), "pull", str(stack.path), "--registry", proxy.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dlenv.env)
        try:
            seen = ""
            deadline = time.monotonic() + 60
            while ": Downloading" not in seen and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                seen += line
            assert ": Downloading" in seen, seen
            time.sleep(1)
            reg.kill()
            proxy.close()  # the registry's port is gone: the engine's retries meet "connection refused"
            out, err = proc.communicate(timeout=180)  # the engine retries 5 times over about 75 s
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        err = seen + err
        print(err)  # shown when the test fails
        assert proc.returncode == 1, out + err
        assert "Traceback" not in err and out == ""
        errors = [ln for ln in err.splitlines() if ln.startswith("dlenv: error:")]
        assert len(errors) == 1 and f"the pull of {remote} broke off" in errors[0], err
        assert "no tag was moved" in errors[0]
        assert re.search(r"^pull layer [0-9a-f]{12}: Retrying in \d+ seconds?$", err, re.M), err
        assert image_id(docker_client, p.hash_tag) == stale
        assert image_id(docker_client, p.latest_tag) == stale
        assert image_id(docker_client, remote) is None
        assert image_id(docker_client, big) is None
    finally:
        proxy.close()
        reg.kill()
        shutil.rmtree(tmp_path / "registry", ignore_errors=True)
        shutil.rmtree(tmp_path / "big", ignore_errors=True)


def test_try_pull_is_quiet_when_missing_warns_when_unusable_and_promotes_when_found(
        docker_client, plain, tmp_path, janitor, monkeypatch):
    """The pull-before-build hook, in process: what `dlenv build` will call under its stack lock."""
    from builder.engine import registry as registry
    for var in ("DLENV_REGISTRY_USER", "DLENV_REGISTRY_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    stack = new_stack(tmp_path)
    p = stack.plan
    janitor.repo(p.repo)
    janitor.repo(remote_ref(p, plain.address))
    warnings = []
    assert registry.try_pull(docker_client, p, plain.address, warn=warnings.append) is False
    assert warnings == []
    nowhere = f"127.0.0.1:{free_port()}"
    assert registry.try_pull(docker_client, p, nowhere, warn=warnings.append) is False
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "building locally" in warnings[0]

    made = scratch_image(docker_client, tmp_path / "img", p.hash_tag, p.content_hash)
    events = []
    result = registry.push(docker_client, p, plain.address, on_progress=events.append)
    assert result.digest.startswith("sha256:") and result.image_id == made
    assert {e.status for e in events} >= {"Pushed"}
    docker_client.images.remove(p.hash_tag)  # and its build parents
    assert image_id(docker_client, made) is None
    assert registry.try_pull(docker_client, p, plain.address, warn=warnings.append) is True
    assert image_id(docker_client, p.hash_tag) == made == image_id(docker_client, p.latest_tag)
    assert len(warnings) == 1


# ------------------------------------------------------------------ no engine: what the daemon says

DAEMON_SAYS = [
    ('Get "http://127.0.0.1:5098/v2/": dial tcp 127.0.0.1:5098: connect: connection refused', "push",
     "unreachable", "is unreachable"),
    ('Get "https://reg.invalid:5000/v2/": dial tcp: lookup reg.invalid on 10.0.0.53:53: no such host', "pull",
     "unreachable", "is unreachable"),
    ("no basic auth credentials", "push", "unauthorized", "unauthorized"),
    ("unauthorized: authentication required", "pull", "unauthorized", "unauthorized"),
    ('Head "http://h:1/v2/x/manifests/1": no basic auth credentials', "pull", "unauthorized", "unauthorized"),
    ("denied: requested access to the resource is denied", "push", "unauthorized", "unauthorized"),
    ("manifest for h:1/dlenv/x:0123 not found: manifest unknown: manifest unknown", "pull", "not_found",
     "is not in the registry"),
    ("pull access denied for dlenv/x, repository does not exist or may require 'docker login'", "pull",
     "not_found", "docker login"),
    ('Get "https://h:1/v2/": http: server gave HTTP response to HTTPS client', "pull", "tls", "insecure-registries"),
    ("x509: certificate signed by unknown authority", "push", "tls", "certs.d"),
    ("unexpected EOF", "pull", "broken", "broke off"),
    ("something else entirely", "push", "other", "push of"),
]


@pytest.mark.parametrize("said, verb, kind, needle", DAEMON_SAYS,
                         ids=[f"{verb}-{kind}-{i}" for i, (_, verb, kind, _) in enumerate(DAEMON_SAYS)])
def test_daemon_messages_are_classified(said, verb, kind, needle, tmp_path):
    from builder.engine.registry import _explain
    stack = new_stack(tmp_path)
    error = _explain(said, verb=verb, remote="h:1/dlenv/x:0123", registry="h:1", plan=stack.plan, auth=None)
    assert error.kind == kind
    assert needle in error.one_line()
    assert "\n" not in error.one_line()


def test_credentials_never_reach_a_message(tmp_path, monkeypatch):
    from builder.engine.registry import RegistryError, _explain, credentials
    monkeypatch.setenv("DLENV_REGISTRY_USER", "alice")
    monkeypatch.setenv("DLENV_REGISTRY_PASSWORD", "hunter2-" + PASSWORD)
    auth = credentials("h:1/prefix")
    assert auth == {"username": "alice", "password": "hunter2-" + PASSWORD, "serveraddress": "h:1"}
    blob = base64.b64encode(f"alice:hunter2-{PASSWORD}".encode()).decode()
    said = f"unauthorized: bad password hunter2-{PASSWORD} header {blob} url http://alice:hunter2-{PASSWORD}@h:1/v2/"
    error = _explain(said, verb="pull", remote="h:1/dlenv/x:0", registry="h:1", plan=new_stack(tmp_path).plan,
                     auth=auth)
    assert error.kind == "unauthorized" and PASSWORD not in error.one_line() and blob not in error.one_line()
    assert "DLENV_REGISTRY_PASSWORD" in error.one_line()
    monkeypatch.delenv("DLENV_REGISTRY_USER")
    with pytest.raises(RegistryError, match="DLENV_REGISTRY_USER is not set"):
        credentials("h:1")


@pytest.mark.parametrize("registry, expected", [
    ("127.0.0.1:5000", "127.0.0.1:5000/dlenv/{name}:{h}"),
    ("reg.example.org/team/", "reg.example.org/team/dlenv/{name}:{h}"),
    ("localhost/x", "localhost/x/dlenv/{name}:{h}"),
])
def test_remote_ref(registry, expected, tmp_path):
    stack = new_stack(tmp_path)
    assert remote_ref(stack.plan, registry) == expected.format(name=stack.name, h=stack.hash16)


def test_a_bare_word_is_not_taken_for_a_registry(tmp_path):
    from builder.engine.registry import RegistryError
    with pytest.raises(RegistryError, match="does not name a registry host"):
        remote_ref(new_stack(tmp_path).plan, "myhost/prefix")


def test_a_registry_base_image_is_pulled_and_built_on(docker_client, plain, dlenv, tmp_path, janitor):
    """`base: {image: ...}` where a registry can be reached: the base is pulled, then built on.
    The registry here serves dlenv's own bootstrapped Debian base under another name."""
    from builder.names import APT_SOURCES_DIR, PACKAGE_REPO_SOURCES
    from builder.plan.pins import base_ref
    from builder.settings.host import debian_sources
    from builder.spec.stack import DEFAULT_BASE

    local_base = base_ref(DEFAULT_BASE)
    assert image_id(docker_client, local_base), "the bootstrapped base must exist (dlenv base)"
    remote_base = f"{plain.address}/mirror/debian:bookworm-{secrets.token_hex(4)}"
    janitor.repo(remote_base)
    # Like a registry's Debian image, it names the Debian archive in its apt sources (dlenv's base names
    # only dlenv's package repository, which serves builds on a bootstrapped base).
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("debian.sources", debian_sources("bookworm")),
                           ("Dockerfile", f"FROM {local_base}\nRUN rm -f {PACKAGE_REPO_SOURCES}\n"
                                          f"COPY debian.sources {APT_SOURCES_DIR}/debian.sources\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    context.seek(0)
    registry_like, _ = docker_client.images.build(fileobj=context, custom_context=True, rm=True)
    tag(docker_client, registry_like.id, remote_base)
    for chunk in docker_client.api.push(remote_base, stream=True, decode=True):
        assert "error" not in chunk, chunk
    docker_client.images.remove(remote_base)
    assert image_id(docker_client, remote_base) is None

    stack = tmp_path / "registry-base.yaml"
    stack.write_text(f"schema: 1\nname: dlenv-itest-regbase\nextends: python\nbase:\n  image: {remote_base}\n")
    janitor.repo("dlenv/dlenv-itest-regbase")
    built = dlenv("build", str(stack), timeout=900)
    assert built.returncode == 0, built.stderr
    assert f"pulling base image {remote_base}" in built.stderr
    assert image_id(docker_client, remote_base) is not None
    attrs = docker_client.api.inspect_image("dlenv/dlenv-itest-regbase:latest")
    # The lock pinned the registry base by digest: FROM (and the label) name it as ref@sha256:...
    assert attrs["Config"]["Labels"]["org.dlenv.base"].startswith(remote_base + "@sha256:")
