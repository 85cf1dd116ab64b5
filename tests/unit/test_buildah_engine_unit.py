"""The buildah engine driver against fake buildah binaries: the version probe, the command line that
gives one image id, the step progress, a failure as one BuildError, and the cleanup after a build or
an interruption (only in dlenv's own storage)."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import pytest

from builder import paths
from builder.engine import buildah
from builder.errors import BuildError, EngineError


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
