"""The buildah engine driver against fake buildah binaries: the version probe, the command line that
gives one image id, the step progress, a failure as one BuildError, and the cleanup after a build or
an interruption (only in dlenv's own storage)."""

from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder import paths
from builder.engine import buildah, buildah_store
from builder.errors import BuildError, EngineError
from builder.pipeline import buildah_build


def fake_buildah(folder: Path, script: str) -> Path:
    path = folder / "buildah"
    path.write_text("#!/bin/bash\n" + 'echo "$*" >> "$(dirname "$0")/calls"\n' + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


VERSION = 'if [ "$1" = version ]; then echo "Version:         1.28.2"; echo "Go Version: go1.19"; exit 0; fi\n'


def test_find_buildah_reads_the_version_and_refuses_old_or_missing(tmp_path):
    fake_buildah(tmp_path, VERSION)
    assert buildah.find_buildah({"PATH": str(tmp_path)}) == (str(tmp_path / "buildah"), "1.28.2")
    fake_buildah(tmp_path, 'echo "Version:         1.27.0"\n')
    with pytest.raises(EngineError) as err:
        buildah.find_buildah({"PATH": str(tmp_path)})
    assert "too old" in err.value.one_line()
    with pytest.raises(EngineError) as err:
        buildah.find_buildah({"PATH": str(tmp_path / "none")})
    assert "not installed" in err.value.one_line() and "--engine sdk" in err.value.one_line()


def test_command_line_is_the_reproducible_one(tmp_path):
    cmd = buildah.command("buildah", tmp_path, "dlenv/x:abc", {"PIP_INDEX_URL": "https://u:tok@i.invalid/"},
                          tmp_path / "iid", epoch=1735689600, secret_file=tmp_path / "ca.pem", nocache=False)
    text = " ".join(cmd)
    for flag in ("--layers", "--format oci", "--timestamp 1735689600", "--identity-label=false", "--pull=never",
                 f"--root {paths.state_dir() / 'buildah' / 'storage'}", f"id=dlenv-ca,src={tmp_path / 'ca.pem'}"):
        assert flag in text
    assert "--no-cache" not in cmd and "tok@" not in text and cmd.index("--root") < cmd.index("build")


FAIL = """
    echo '[1/2] STEP 1/3: FROM dlenv/base:x AS build'
    echo '[1/2] STEP 3/3: RUN ["/bin/bash", "-c", "pip install nothere"]'
    echo 'ERROR: No matching distribution found for nothere'
    echo 'Error: building at STEP "RUN /bin/bash -c pip install nothere": while running runtime: exit status 1'
    exit 1
"""


def test_failure_is_one_build_error_at_its_step_and_cleans_up(tmp_path):
    cli = fake_buildah(tmp_path, 'case " $* " in *" build "*) ;; *) exit 0;; esac\n' + textwrap.dedent(FAIL))
    log = tmp_path / "logs" / "x.log"
    seen = []
    with pytest.raises(BuildError) as err:
        buildah.build(str(cli), tmp_path, "dlenv/x:1", {}, log, epoch=1,
                      on_progress=lambda p, line: seen.append((p.step, p.total)))
    e = err.value
    assert e.step == 'step 3/3: [stage 1/2] RUN ["/bin/bash", "-c", "pip install nothere"]'
    assert "exit status 1" in e.message and "\n" not in e.one_line() and "nothere" in (e.hint or "")
    assert (1, 3) in seen and e.log_path == str(log)
    calls = (tmp_path / "calls").read_text()
    assert " rm --all" in calls and " rmi --prune" in calls and calls.count("--root") == 3


def test_success_returns_the_id_and_keeps_the_layer_cache(tmp_path):
    cli = fake_buildah(tmp_path, """
        while [ $# -gt 0 ]; do [ "$1" = --iidfile ] && echo feed > "$2"; shift; done
    """)
    assert buildah.build(str(cli), tmp_path, "dlenv/x:1", {}, tmp_path / "x.log", epoch=1) == "sha256:feed"
    calls = (tmp_path / "calls").read_text()
    assert " rm --all" in calls and "rmi --prune" not in calls


def test_interrupt_stops_buildah_and_prunes(tmp_path):
    cli = fake_buildah(tmp_path, """
        case " $* " in *" build "*) ;; *) exit 0;; esac
        echo '[2/2] STEP 2/6: RUN long'
        sleep 300
    """)

    def interrupt(progress, line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        buildah.build(str(cli), tmp_path, "dlenv/x:1", {}, tmp_path / "x.log", epoch=1, on_progress=interrupt)
    calls = (tmp_path / "calls").read_text()
    assert " rm --all" in calls and " rmi --prune" in calls


class _Images:
    def __init__(self):
        self.loaded = 0

    def load(self, handle):
        self.loaded += 1


class _Client:
    def __init__(self):
        self.images = _Images()


@pytest.mark.parametrize("docker_host, transport", [("", "docker-daemon:"), ("tcp://10.0.0.9:2376", "docker-archive:")])
def test_to_docker_uses_the_daemon_transport_only_for_the_local_socket(monkeypatch, tmp_path, docker_host, transport):
    calls, untagged = [], []

    def fake_run(cli, *args, **kw):
        calls.append(args)
        if args[-1].startswith("docker-archive:"):
            Path(args[-1].split(":")[1]).write_bytes(b"tar")

    monkeypatch.setattr(buildah_store, "run_buildah", fake_run)
    monkeypatch.setattr(buildah_store.engine, "image_attrs", lambda client, ref: {"Id": "sha256:feed"})
    monkeypatch.setattr(buildah_store.engine, "untag", lambda client, ref: untagged.append(ref))
    monkeypatch.setattr(paths, "state_dir", lambda: tmp_path)
    client = _Client()
    buildah_store.to_docker("buildah", client, "dlenv/x:abc", "dlenv/x:abc-candidate", "sha256:feed",
                            environ={"DOCKER_HOST": docker_host} if docker_host else {})
    assert calls[0][-1].startswith(transport) and calls[0][-1].endswith("dlenv/x:abc-candidate")
    assert client.images.loaded == (1 if transport == "docker-archive:" else 0)
    with pytest.raises(EngineError) as err:
        buildah_store.to_docker("buildah", client, "dlenv/x:abc", "dlenv/x:abc-candidate", "sha256:other", environ={})
    assert "not buildah's sha256:other" in err.value.one_line()


def test_base_archive_is_byte_identical_and_its_id_is_the_config_digest(tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(b"x" * 1024)
    base = {"bootstrap": {"suite": "bookworm", "variant": "minbase"}}
    config = buildah_store.base_config(base, "ab" * 32, {"bash": "5.2"}, "amd64")
    one = buildah_store.write_base_archive(tmp_path / "a.tar", "dlenv/base:t", rootfs, config, "ab" * 32)
    two = buildah_store.write_base_archive(tmp_path / "b.tar", "dlenv/base:t", rootfs, config, "ab" * 32)
    assert one == two and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert b'"created":"2025-01-01T00:00:00Z"' in config


def test_differing_paths_lists_each_path_once():
    a = {(0, "etc/shadow", "0", 0o640, 0, 0, 10, "aa"), (1, "x", "0", 0o644, 0, 0, 1, "bb")}
    b = {(0, "etc/shadow", "0", 0o640, 0, 0, 10, "cc"), (1, "x", "0", 0o644, 0, 0, 1, "bb")}
    assert buildah_store.differing_paths(a, b) == ["etc/shadow"]


def test_a_buildah_build_is_given_dlenv_s_arguments_only(monkeypatch):
    """buildah writes the name of every proxy argument it is given into the history of each ARG step, so
    the host's proxies gave another image id (issue #24): a build with dlenv's repository takes none of
    the host's proxy or pip settings, and buildah runs without the host's proxies."""
    for var in ("https_proxy", "no_proxy", "HTTP_PROXY", "PIP_INDEX_URL"):
        monkeypatch.setenv(var, "http://proxy.invalid:3128/")
    args = buildah_build.build_arguments("http://127.0.0.1:4242", "ab" * 32)
    assert set(args) == {"http_proxy", "HTTP_PROXY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
                         "DLENV_CONTENT_HASH"}
    assert args["HTTP_PROXY"] == "http://127.0.0.1:4242" and "proxy.invalid" not in str(args)
    # No repository (an unlocked stack: no id is recorded): pip needs the host's settings.
    assert buildah_build.build_arguments(None, "ab" * 32)["PIP_INDEX_URL"] == "http://proxy.invalid:3128/"
    env = buildah.build_environment(args, {"PATH": "/bin", "no_proxy": "*", "ALL_PROXY": "socks5://x", "https_proxy": "y"})
    assert env == {"PATH": "/bin", **args}


CONFIG = {"created": "2025-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
          "config": {"Env": ["LANG=C.UTF-8"], "Labels": {"org.dlenv.stack": "x"}},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]},
          "history": [{"created_by": "dlenv bootstrap"},
                      {"created_by": "/bin/sh -c #(nop) ARG DLENV_CONTENT_HASH HTTP_PROXY http_proxy",
                       "comment": "FROM 9db052ad9615", "empty_layer": True},
                      {"created_by": "/bin/sh -c #(nop) USER 1000:1000", "comment": "FROM b32bda026b3a",
                       "empty_layer": True},
                      {"created_by": "/bin/sh -c #(nop) CMD [\"bash\"]", "comment": "FROM c5c4a0b6ca65",
                       "empty_layer": True}]}


def test_config_differences_name_the_first_history_entry_that_differs():
    """As measured (issue #24): a host's no_proxy in the ARG step's history, and every later step's
    comment naming the image before it."""
    now = json.loads(json.dumps(CONFIG))
    now["history"][1]["created_by"] += " no_proxy"
    now["history"][2]["comment"], now["history"][3]["comment"] = "FROM 509e8bbc88eb", "FROM f66996559713"
    assert buildah_store.config_differences(CONFIG, now) == [
        "history entry 1 created_by: '/bin/sh -c #(nop) ARG DLENV_CONTENT_HASH HTTP_PROXY http_proxy' -> "
        "'/bin/sh -c #(nop) ARG DLENV_CONTENT_HASH HTTP_PROXY http_proxy no_proxy'",
        "2 later history entries"]
    now = json.loads(json.dumps(CONFIG))
    now["rootfs"]["diff_ids"][1] = "sha256:cc"
    now["config"]["Labels"]["org.dlenv.stack"] = "y"
    now["created"] = "2026-12-07T00:00:00Z"
    assert buildah_store.config_differences(CONFIG, now) == [
        "the digest of layer 1", "config Labels org.dlenv.stack: 'x' -> 'y'",
        "created: '2025-01-01T00:00:00Z' -> '2026-12-07T00:00:00Z'"]
    assert buildah_store.config_differences(CONFIG, CONFIG) == []


def _plan(recorded: str | None, parent: bool = True):
    lock = SimpleNamespace(images={"buildah-1.28/linux-amd64": recorded} if recorded else {}, platform={"arch": "amd64"})
    return SimpleNamespace(lock=lock, hash_tag="dlenv/child:c0ffee", resolved=SimpleNamespace(name="child"),
                           parent=SimpleNamespace(hash_tag="dlenv/parent:beef", resolved=SimpleNamespace(name="parent"))
                           if parent else None)


@pytest.mark.parametrize("parent_reproducible, promoted_on_parent, want", [
    (True, False, "sha256:recorded"),        # where the id was recorded: the lock's id
    (False, True, "sha256:promoted"),        # another parent (an sdk build of it): the image built on it
    (False, False, None),                    # nothing built on this parent: one line saying so
])
def test_check_compares_like_with_like(monkeypatch, parent_reproducible, promoted_on_parent, want):
    monkeypatch.setattr(buildah_build, "_parent_is_reproducible", lambda bh, client, p, log: parent_reproducible)
    monkeypatch.setattr(buildah_build.engine, "image_attrs", lambda client, ref: {"Id": "sha256:promoted"})
    monkeypatch.setattr(buildah_build, "built_on", lambda client, ref, parent: promoted_on_parent)
    bh, notes = buildah_build.Buildah("buildah", "1.28.2"), []
    if want is None:
        with pytest.raises(BuildError) as err:
            buildah_build.compared_with(bh, object(), _plan("sha256:recorded"), notes.append)
        assert "was built on another dlenv/parent:beef" in err.value.one_line() and "--no-cache" in err.value.hint
        return
    assert buildah_build.compared_with(bh, object(), _plan("sha256:recorded"), notes.append) == want
    assert bool(notes) == (want == "sha256:promoted")
    # Without a parent image, or without a recorded id: the recorded one, else the promoted one.
    assert buildah_build.compared_with(bh, object(), _plan("sha256:recorded", parent=False), notes.append) == \
        "sha256:recorded"
    if promoted_on_parent:
        assert buildah_build.compared_with(bh, object(), _plan(None), notes.append) == "sha256:promoted"


def test_built_on_compares_the_parent_s_layers_and_history(monkeypatch):
    layers = {"dlenv/parent:beef": ["sha256:a"], "dlenv/child:c0ffee": ["sha256:a", "sha256:b"],
              "dlenv/other:1": ["sha256:z", "sha256:b"]}
    history = {"dlenv/parent:beef": [(1, "boot", "")], "dlenv/child:c0ffee": [(1, "boot", ""), (1, "USER 0:0", "FROM p")],
               "dlenv/other:1": [(1, "boot", "x"), (1, "USER 0:0", "FROM p")]}
    monkeypatch.setattr(buildah_build.engine, "image_attrs", lambda client, ref: {"RootFS": {"Layers": layers[ref]}})
    monkeypatch.setattr(buildah_build.engine, "history_steps", lambda client, ref: history[ref])
    assert buildah_build.built_on(None, "dlenv/child:c0ffee", "dlenv/parent:beef")
    assert not buildah_build.built_on(None, "dlenv/other:1", "dlenv/parent:beef")
    layers["dlenv/other:1"][0] = "sha256:a"                  # same layers, another history: another parent
    assert not buildah_build.built_on(None, "dlenv/other:1", "dlenv/parent:beef")
