"""Lock files without the engine: parsing what the lock container reports, the file format and its
validation, staleness (what changed), rendering from a lock, and the lock check's comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.plan import lockfile as L
from builder.plan import pins as P
from builder.plan.layered import layered_inputs
from builder.plan.plan import parent_of
from builder.plan.plan import plan
from builder.cli.app import main
from builder.errors import LockError
from builder.plan.render import content_hash, render_context
from builder.verify.checks import compare_installed, lock_expectations

ENV = {"NO_COLOR": "1", "COLUMNS": "300", "DOCKER_HOST": "unix:///nonexistent.sock"}
SHA = "a" * 64


def fake_lock(resolved, *, tweak=None) -> L.Lock:
    """A lock for `resolved` with made-up pins: one pin per requirement of every pip step."""
    python = {}
    for step in P.pip_steps(resolved):
        pins = []
        for req in step.requirements:
            name, _, version = req.partition("==")
            pins.append(L.PythonPin(name, version or "1.0", f"{name}-{version or '1.0'}-py3-none-any.whl", SHA))
        python[step.name] = tuple(pins)
    sources = {comp: {**src, "sha256": "b" * 64, "size": 10} for comp, src in P.debian_sources(resolved).items()}
    lock = L.Lock(stack=resolved.name, inputs=P.lock_inputs(resolved), platform={"arch": "amd64", "python": "3.11.2"},
                  base={"suite": "bookworm", "variant": "minbase", "epoch": 1735689600, "rootfs_sha256": "c" * 64,
                        "packages": {"bash": "5.2.15-2+b13", "dpkg": "1.21.23"}},
                  apt_build={"python3": "3.11.2-1+b1", "gcc": "4:12.2.0-3"}, apt_runtime={"python3": "3.11.2-1+b1"},
                  sources=sources, python=python, dlenv_version="test")
    return tweak(lock) if tweak else lock


def write_stack(folder: Path, extra: str = "") -> Path:
    path = folder / "dlenv.yaml"
    path.write_text("schema: 1\nname: proj\nextends: python\npython_packages:\n  - \"six==1.17.0\"\n" + extra)
    return path


def fake_layered_lock(p) -> L.Lock:
    """A lock for a stack built on its parent's image: its own pins only, and the parent it was written on."""
    parent = parent_of(p.parent)
    lock = fake_lock(p.resolved)
    own = {step: pins for step, pins in lock.python.items() if step == P.LEAF_STEP}
    return dataclasses.replace(lock, inputs=layered_inputs(p.resolved, parent), base={"packages": {}},
                               sources={}, python=own,
                               parent={"stack": parent.stack, "content_hash": parent.content_hash,
                                       "lock": parent.lock.digest})


def lock_for(path: Path) -> L.Lock:
    p = plan(str(path))
    lock = fake_layered_lock(p) if p.parent is not None else fake_lock(p.resolved)
    L.lock_path(path).write_text(L.dump(lock))
    return lock


# --- parsing ---------------------------------------------------------------------------------

def test_apt_simulation_lists_new_and_upgraded_packages():
    text = """NOTE: This is only a simulation!
Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst python3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])
Inst libgcc-s1:amd64 (12.2.0-14 Debian:12.11/stable [amd64])
Conf python3.11-minimal (3.11.2-6+deb12u6 Debian:12.11/stable [amd64])
"""
    assert L.parse_apt_simulation(text) == {"libssl3": "3.0.17-1~deb12u2", "python3.11-minimal": "3.11.2-6+deb12u6",
                                            "libgcc-s1": "12.2.0-14"}


def test_dpkg_list_keeps_only_installed_packages():
    text = "bash\t5.2.15-2+b7\tii \nold\t1.0\trc \nlibc6:amd64\t2.36-9\tii \n"
    assert L.parse_dpkg_list(text) == {"bash": "5.2.15-2+b7", "libc6": "2.36-9"}


def test_source_uris_give_size_and_sha256_per_file():
    text = ("Need to get 6988 kB of source archives.\n"
            f"'http://mirror.invalid/pool/main/o/openmpi/openmpi_4.1.4-3.dsc' openmpi_4.1.4-3.dsc 2743 SHA256:{SHA}\n"
            f"'http://mirror.invalid/pool/main/o/openmpi/openmpi_4.1.4.orig.tar.xz' openmpi_4.1.4.orig.tar.xz 6916772 "
            f"SHA256:{'d' * 64}\n")
    assert L.parse_source_uris(text) == {"openmpi_4.1.4-3.dsc": (2743, SHA),
                                         "openmpi_4.1.4.orig.tar.xz": (6916772, "d" * 64)}


def _item(name, version, url, **archive):
    return {"metadata": {"name": name, "version": version},
            "download_info": {"url": url, "archive_info": archive}}


def test_pip_report_gives_file_and_sha256_for_wheels_and_sdists():
    report = {"install": [
        _item("numpy", "1.26.4", "https://index.invalid/p/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl",
              hashes={"sha256": SHA}),
        _item("chainer", "7.8.1", "https://index.invalid/p/chainer-7.8.1.tar.gz", hash=f"sha256={'e' * 64}"),
    ]}
    pins = L.parse_pip_report(report)
    assert pins == [L.PythonPin("numpy", "1.26.4", "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl", SHA),
                    L.PythonPin("chainer", "7.8.1", "chainer-7.8.1.tar.gz", "e" * 64)]
    assert pins[0].requirement_line() == f"numpy==1.26.4 --hash=sha256:{SHA}"


def test_pip_report_refuses_what_has_no_index_hash():
    with pytest.raises(LockError, match="without a sha256"):
        L.parse_pip_report({"install": [{"metadata": {"name": "local", "version": "0.1"},
                                         "download_info": {"url": "file:///src/local", "dir_info": {}}}]})


# --- the file ----------------------------------------------------------------------------------

def test_dump_and_load_round_trip(tmp_path):
    path = write_stack(tmp_path)
    lock = lock_for(path)
    loaded = L.load(L.lock_path(path))
    assert loaded.pins_document() == lock.pins_document()
    assert loaded.digest == lock.digest
    text = L.lock_path(path).read_text()
    assert text.startswith("# Written by `dlenv lock proj`")
    assert L.lock_path(path).name == "dlenv.lock"


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace("lock: 1", "lock: 7"), "lock"),
    (lambda t: t.replace("- six==1.17.0", "- six==1.16.0"), "inputs_sha256"),
    (lambda t: t.replace(f"sha256: {SHA}", "sha256: nothex", 1), "sha256"),
    (lambda t: t.replace("python3: 3.11.2-1+b1", "python3: 3.11 2", 1), "apt.build.python3"),
    (lambda t: t.replace("stack: proj\n", ""), "stack"),
    (lambda t: "- just\n- a list\n", "(top)"),
])
def test_a_damaged_lock_is_one_line_naming_the_file_and_field(tmp_path, edit, field):
    path = write_stack(tmp_path)
    lock_for(path)
    lock_file = L.lock_path(path)
    lock_file.write_text(edit(lock_file.read_text()))
    with pytest.raises(LockError) as info:
        L.load(lock_file)
    assert str(lock_file) in info.value.message and field in info.value.message


# --- staleness ---------------------------------------------------------------------------------

def test_a_matching_lock_is_used_and_reordering_the_yaml_keeps_it(tmp_path):
    path = write_stack(tmp_path, "env:\n  A: \"1\"\n")
    lock_for(path)
    assert plan(str(path)).lock_state == "locked"
    path.write_text("name: proj\nenv:\n  A: \"1\"\npython_packages:\n  - \"six==1.17.0\"\nextends: python\nschema: 1\n")
    p = plan(str(path))
    assert p.lock_state == "locked"
    assert "--require-hashes" in p.context.dockerfile


def test_a_changed_stack_makes_the_lock_stale_and_says_what_changed(tmp_path):
    path = write_stack(tmp_path)
    lock_for(path)
    path.write_text(path.read_text() + "  - \"requests==2.32.3\"\napt_packages: [curl]\n")
    p = plan(str(path))
    assert p.lock_state == "stale"
    assert "+requests==2.32.3" in p.stale_reason and "+curl" in p.stale_reason
    assert "--require-hashes" not in p.context.dockerfile


def test_changes_outside_the_inputs_keep_the_lock(tmp_path):
    path = write_stack(tmp_path)
    lock_for(path)
    path.write_text(path.read_text() + "env:\n  B: two\nchecks:\n  - name: ok\n    command: \"true\"\n")
    assert plan(str(path)).lock_state == "locked"


# --- rendering from a lock -----------------------------------------------------------------------

def test_render_pins_every_install_of_chainermn():
    p = plan("chainermn")
    lock = fake_lock(p.resolved)
    ctx = render_context(p.resolved, lock)
    df = ctx.dockerfile
    assert "xargs --no-run-if-empty --arg-file=/etc/dlenv-build/apt-build.txt apt-get install" in df
    assert "COPY dlenv-runtime/apt.txt /etc/dlenv/apt-runtime.txt" in df
    assert f"echo '{'b' * 64}  openmpi_4.1.4.orig.tar.xz' | sha256sum --check --strict -" in df
    assert "COPY dlenv-build/pylock/cupy.txt /etc/dlenv-build/pylock/cupy.txt" in df
    assert ("/opt/venv/bin/pip install --no-build-isolation --no-deps --require-hashes "
            "-r /etc/dlenv-build/pylock/chainer.txt") in df
    assert "--target /opt/nvidia/cudnn --require-hashes -r /etc/dlenv-build/pylock/cudnn.txt" in df
    assert ctx.files["dlenv-build/pylock/numpy.txt"] == f"numpy==1.26.4 --hash=sha256:{SHA}\n".encode()
    assert ctx.files["dlenv-build/apt-build.txt"] == b"gcc=4:12.2.0-3\npython3=3.11.2-1+b1\n"
    assert ctx.base_ref.startswith("dlenv/base:bookworm-minbase-") and ctx.base_ref != render_context(p.resolved).base_ref
    assert f"org.dlenv.lock=\"{lock.digest}\"" in df


@pytest.mark.parametrize("tweak", [
    lambda lk: L.Lock(**{**lk.__dict__, "apt_runtime": {"python3": "3.11.2-1+b2"}}),
    lambda lk: L.Lock(**{**lk.__dict__, "base": {**lk.base, "packages": {"bash": "5.2.15-2+b14", "dpkg": "1.21.23"}}}),
    lambda lk: L.Lock(**{**lk.__dict__, "python": {**lk.python, "numpy": (
        L.PythonPin("numpy", "1.26.4", "numpy-1.26.4-py3-none-any.whl", "f" * 64),)}}),
    lambda lk: L.Lock(**{**lk.__dict__, "sources": {**lk.sources, "openmpi": {**lk.sources["openmpi"], "sha256": "9" * 64}}}),
])
def test_any_pin_changes_the_content_hash(tweak):
    p = plan("chainermn")
    base_hash = content_hash(render_context(p.resolved, fake_lock(p.resolved)))
    assert content_hash(render_context(p.resolved, fake_lock(p.resolved, tweak=tweak))) != base_hash


def test_a_lock_whose_source_differs_is_refused():
    p = plan("chainermn")
    lock = fake_lock(p.resolved, tweak=lambda lk: L.Lock(**{**lk.__dict__, "sources": {}}))
    with pytest.raises(Exception, match=r"sources\.(openmpi|ucx): the lock does not match"):
        render_context(p.resolved, lock)


# --- the lock check in verify ------------------------------------------------------------------

def test_compare_installed_names_every_difference():
    p = plan("chainer")
    lock = fake_lock(p.resolved)
    expected = lock_expectations(p.resolved, lock)
    venv = "/opt/venv/lib/python3.11/site-packages"
    found = {"debian": {**lock.base_packages, **lock.apt_runtime},
             "python": {venv: {pin.name: pin.version for pins in lock.python.values() for pin in pins}}}
    assert compare_installed(expected, found) == []
    found["debian"]["curl"] = "7.88.1-10"
    found["debian"]["bash"] = "5.2.15-2+b2"
    found["python"][venv]["numpy"] = "2.1.3"
    problems = compare_installed(expected, found)
    assert "deb bash is 5.2.15-2+b2, the lock says 5.2.15-2+b13" in problems
    assert "deb curl 7.88.1-10 is installed but not in the lock" in problems
    assert any(p.startswith("numpy in /opt/venv") and "2.1.3" in p for p in problems)


# --- the CLI -------------------------------------------------------------------------------------

def _run(args, cwd):
    import os
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, env=ENV)
    finally:
        os.chdir(old)


def test_lock_check_says_missing_stale_or_matching(tmp_path):
    path = write_stack(tmp_path)
    res = _run(["lock", "--check"], tmp_path)
    assert res.exit_code == 1 and "dlenv.lock is missing" in res.output and "Traceback" not in res.output
    lock_for(path)
    res = _run(["lock", "--check"], tmp_path)
    assert res.exit_code == 0 and "matches" in res.output
    path.write_text(path.read_text() + "  - \"requests==2.32.3\"\n")
    res = _run(["lock", "--check"], tmp_path)
    assert res.exit_code == 1 and "no longer matches" in res.output and "+requests==2.32.3" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_a_damaged_lock_fails_every_command_in_one_line(tmp_path):
    path = write_stack(tmp_path)
    lock_for(path)
    L.lock_path(path).write_text("lock: 1\nstack: [unclosed\n")
    for args in (["render"], ["show"], ["lock", "--check"]):
        res = _run(args, tmp_path)
        assert res.exit_code == 1, args
        assert "dlenv.lock" in res.output and "Traceback" not in res.output


def test_build_refuses_relock_with_locked(tmp_path):
    write_stack(tmp_path)
    res = _run(["build", "--relock", "--locked"], tmp_path)
    assert res.exit_code == 1 and "contradict" in res.output


def test_a_build_that_meets_a_missing_pin_says_which_and_what_to_do():
    from builder.engine.buildlog import _build_hint
    hint = _build_hint("The command '/bin/bash ...' returned a non-zero code: 100",
                       ["E: Version '0.0-gone' for 'python3' was not found"])
    assert "pinned versions no longer available: python3=0.0-gone" in hint and "dlenv lock" in hint
    hint = _build_hint("returned a non-zero code: 1", ["ERROR: No matching distribution found for six==0.0.1"])
    assert "six==0.0.1" in hint
    hint = _build_hint("returned a non-zero code: 1",
                       ["ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE."])
    assert "does not match the sha256 in the lock" in hint
    assert _build_hint("returned a non-zero code: 2", ["make: *** [all] Error 2"]) is None


@pytest.mark.parametrize("stack", ["python", "chainer", "chainer-gpu", "chainermn", "datascience", "all-in-one",
                                   "all-in-one-gpu"])
def test_every_catalog_stack_has_a_lock_that_matches_it(stack):
    """CI builds the catalog from these locks: a stack edited without `dlenv lock` fails here."""
    p = plan(stack)
    assert p.lock_state == "locked", f"stacks/{stack}.lock: {p.lock_state} {p.stale_reason}"
    assert p.lock.platform["arch"] == "amd64" and p.lock.base["rootfs_sha256"]


def test_the_readme_catalog_table_is_what_dlenv_list_markdown_prints():
    res = CliRunner().invoke(main, ["list", "--markdown"], env=ENV)
    assert res.exit_code == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert res.output in readme, "regenerate the README's catalog table with `dlenv list --markdown`"


# --- the locker's pin keeping, against a stand-in for the lock container ----------------------

class FakeBox:
    """Answers the locker's commands: records the constraints each pip step ran with and returns a
    canned report; `fail_when` makes a dry run fail while its constraints contain that text."""

    def __init__(self, reports: dict, fail_when: str | None = None):
        self.reports, self.fail_when = reports, fail_when
        self.files: dict = {}
        self.constraints: list = []

    def put(self, path, data):
        self.files[path] = data.decode()

    def sh(self, script, what, env=None):
        if script.startswith("python3 -c"):
            return "3.11.2\n"
        if script.startswith("cat "):
            step = script.rsplit("/", 1)[-1].removesuffix(".json")
            return json.dumps(self.reports[step])
        if "--dry-run" in script:
            constraints = self.files[env["PIP_CONSTRAINT"]]
            self.constraints.append(constraints)
            if self.fail_when and self.fail_when in constraints:
                raise LockError("resolving pip step failed: ResolutionImpossible")
            return ""
        return ""


def _report(*pins):
    return {"install": [_item(n, v, f"https://index.invalid/{n}-{v}-py3-none-any.whl", hashes={"sha256": SHA})
                        for n, v in pins]}


def _project_steps(tmp_path):
    path = tmp_path / "dlenv.yaml"
    path.write_text('schema: 1\nname: proj\nextends: python\npython_packages: ["requests>=2"]\n')
    p = plan(str(path))
    return p.resolved, P.pip_steps(p.resolved)


def _previous(resolved, version):
    lock = fake_lock(resolved)
    return L.Lock(**{**lock.__dict__, "python": {"python_packages": (
        L.PythonPin("requests", "2.31.0", "requests-2.31.0-py3-none-any.whl", SHA),
        L.PythonPin("idna", version, f"idna-{version}-py3-none-any.whl", SHA))}})


def test_relock_keeps_previous_pins_and_upgrade_releases_one(tmp_path):
    from builder.pipeline.locker import LockReport, _resolve_steps
    resolved, steps = _project_steps(tmp_path)
    previous = _previous(resolved, "3.6")
    box = FakeBox({"python_packages": _report(("requests", "2.31.0"), ("idna", "3.6"))})
    report = LockReport()
    out, platform = _resolve_steps(box, resolved, steps, previous, set(), report, lambda m: None)
    assert "requests==2.31.0" in box.constraints[0] and "idna==3.6" in box.constraints[0]
    assert [p.name for p in out["python_packages"]] == ["idna", "requests"] and report.kept == 2
    assert platform == {"python": "3.11.2"}
    box = FakeBox({"python_packages": _report(("requests", "2.32.3"), ("idna", "3.6"))})
    _resolve_steps(box, resolved, steps, previous, {"requests"}, LockReport(), lambda m: None)
    assert "requests==" not in box.constraints[0] and "idna==3.6" in box.constraints[0]


def test_a_kept_pin_that_conflicts_is_resolved_again_and_reported(tmp_path):
    from builder.pipeline.locker import LockReport, _resolve_steps
    resolved, steps = _project_steps(tmp_path)
    box = FakeBox({"python_packages": _report(("requests", "2.32.3"), ("idna", "3.10"))}, fail_when="idna==2.0")
    report = LockReport()
    out, _ = _resolve_steps(box, resolved, steps, _previous(resolved, "2.0"), set(), report, lambda m: None)
    assert len(box.constraints) == 2 and "idna==" not in box.constraints[1]
    assert {p.version for p in out["python_packages"]} == {"2.32.3", "3.10"}
    assert any("previous pins conflict" in n for n in report.notes)


def test_a_relock_resolves_only_the_steps_whose_inputs_changed(tmp_path):
    from builder.pipeline.locker import LockReport, _resolve_steps, reusable_steps
    path = tmp_path / "dlenv.yaml"
    path.write_text('schema: 1\nname: proj\nextends: chainer\npython_packages: ["six==1.17.0"]\n')
    p = plan(str(path))
    previous = fake_lock(p.resolved)
    steps = P.pip_steps(p.resolved)
    assert reusable_steps(p.resolved, steps, previous, set(), previous.apt_build) == len(steps)
    assert reusable_steps(p.resolved, steps, previous, set(), {"python3": "other"}) == 0   # another Python
    first = [s.name for s in steps].index("numpy")
    assert reusable_steps(p.resolved, steps, previous, {"numpy"}, previous.apt_build) == first
    # One more package for the stack: every component step is kept without a dry run, the leaf resolved.
    path.write_text(path.read_text().replace('["six==1.17.0"]', '["six==1.17.0", "packaging==24.1"]'))
    p = plan(str(path))
    steps = P.pip_steps(p.resolved)
    reuse = reusable_steps(p.resolved, steps, previous, set(), previous.apt_build)
    assert reuse == len(steps) - 1 and steps[-1].name == P.LEAF_STEP
    box = FakeBox({P.LEAF_STEP: _report(("six", "1.17.0"), ("packaging", "24.1"))})
    report = LockReport()
    out, _ = _resolve_steps(box, p.resolved, steps, previous, set(), report, lambda m: None, reuse=reuse)
    assert len(box.constraints) == 1                      # one dry run: the leaf's
    assert all(out[s.name] == previous.python[s.name] for s in steps[:-1])
    assert {x.name for x in out[P.LEAF_STEP]} == {"six", "packaging"}
