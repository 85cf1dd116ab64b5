"""Hostile input, round 2 (#18): every file dlenv reads, every name it echoes, every value it
passes on. Each case must either work or be refused in one line `dlenv: error: ...` that names
the file, with exit status 1, nothing on stdout, no traceback, no raw control character and no
hang; a hostile file in a project folder must never make `render` hang or crash.

Only `builder.cli.main` is imported (the package's modules are being moved). Commands that could
hang or eat memory run `dlenv` as a subprocess with a timeout and an address-space limit.
Fixtures: tests/fixtures/hostile/."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dlenv_unit import ROOT

HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
TERMINAL_CASES = yaml.safe_load((HOSTILE / "terminal" / "cases.yaml").read_text())
PYTHON_LOCK = ROOT / "stacks" / "python.lock"

# C0 controls but tab and newline, DEL, and the C1 range (U+009B is a one-character CSI).
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ESCAPED_ESC = ("\\x1b", "\\e", "\\u001b", "\\033", "^[")
FAST_S = 5.0            # "fast": a refusal needs no more than this, in-process
HANG_S = 8              # a subprocess that runs longer than this hangs
MEMORY = 2 << 30        # address-space limit of a subprocess: a 3 GB file cannot be read whole
MAX_LINE = 2000         # an error line longer than this floods the terminal
INIT_OUTPUT = 10_000    # `dlenv init` prints a short report


# --- helpers --------------------------------------------------------------------------------------

def assert_clean(text: str) -> None:
    """No raw control character (ESC, CR, BEL, C1 ...) reaches the terminal."""
    bad = RAW_CONTROL.search(text)
    assert bad is None, f"raw control character {bad.group()!r} in output: {text[:500]!r}"


def one_line_error(result, *names: str) -> str:
    """Exit 1, nothing on stdout, exactly one `dlenv: error:` line on stderr naming every one of
    `names`, no traceback (CliRunner keeps the exception: it must be SystemExit), no raw control
    character, no ANSI, not a flood."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception!s:.300}"
    assert result.exit_code == 1, (result.exit_code, result.output[:500])
    assert result.stdout == "", result.stdout[:500]
    assert "Traceback" not in result.output
    assert_clean(result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[:2000]
    line = lines[0]
    assert line.startswith("dlenv: error: "), line[:500]
    assert len(line) <= MAX_LINE, f"error line of {len(line)} characters: {line[:300]}..."
    for name in names:
        assert name in line, f"{name!r} not named in {line[:500]!r}"
    return line


def proc_one_line_error(proc, *names: str) -> str:
    """The same for a subprocess run (stdout and stderr as text)."""
    out, err = proc.stdout, proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert out == "", out[:500]
    assert_clean(out + err)
    lines = err.splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("dlenv: error: "), lines[0][:500]
    assert len(lines[0]) <= MAX_LINE, lines[0][:300]
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0][:500]!r}"
    return lines[0]


@pytest.fixture
def dlenv(cli, tmp_path):
    """`cli` with the user's own config kept out, timed: returns (result, seconds)."""
    xdg = tmp_path / "xdg-empty"

    def invoke(*args, env: dict | None = None):
        start = time.monotonic()
        result = cli(*args, env={"XDG_CONFIG_HOME": str(xdg), **(env or {})})
        return result, time.monotonic() - start

    return invoke


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_dlenv(args, *, cwd: Path, home: Path, timeout: float = HANG_S, env: dict | None = None):
    """`dlenv ARGS` as a subprocess of this tree's code, with a timeout and a memory limit.
    A run past the timeout fails the test (it is killed) instead of blocking the suite."""
    exe = Path(sys.executable).with_name("dlenv")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from builder.cli import main; sys.exit(main())"]
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DLENV_", "XDG_", "PYTHON"))}
    full.update({"NO_COLOR": "1", "COLUMNS": "80", "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg"),
                 "DLENV_STATE_DIR": str(home / "state"), "PYTHONPATH": str(ROOT)})
    full.update(env or {})
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd + [str(a) for a in args], cwd=cwd, env=full, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              preexec_fn=_limit_memory, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`dlenv {' '.join(map(str, args))}` did not finish in {timeout}s (hang)")
    return proc, time.monotonic() - start


def project(tmp_path: Path, body: str = "", *, name: str = "proj", extends: str = "python",
            filename: str = "dlenv.yaml", folder: str = "proj") -> Path:
    """A project folder with a stack file extending a catalog stack; returns the stack file."""
    root = tmp_path / folder
    root.mkdir(parents=True, exist_ok=True)
    path = root / filename
    path.write_text(f"schema: 1\nname: {name}\nextends: {extends}\n{body}")
    return path


def lock_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# Lock-file cases re-address python.lock to a project: a project that adds nothing would build on the
# python image (a layered lock); declaring python's component keeps it a whole build with python's inputs.
WHOLE_BUILD = 'components: {python: "3.11"}\n'


def project_lock(stack: str = "proj") -> dict:
    """The python stack's shipped lock, re-addressed to a project extending python (same inputs)."""
    doc = yaml.safe_load(PYTHON_LOCK.read_text())
    doc["stack"] = stack
    return doc


def write_lock(path: Path, doc, *, fix_digest: bool = True, dumper=yaml.safe_dump) -> Path:
    if fix_digest and isinstance(doc, dict) and "inputs" in doc:
        try:
            doc["inputs_sha256"] = lock_digest(doc["inputs"])
        except (TypeError, ValueError):
            doc["inputs_sha256"] = "0" * 64
    path.write_text(dumper(doc, sort_keys=False))
    return path


# --- 1. parser resource limits, for every YAML dlenv reads -----------------------------------------

def _laughs(levels: int = 9, width: int = 10) -> bytes:
    items = [b"&l0 [" + b", ".join([b"lol"] * width) + b"]"]
    for i in range(1, levels):
        items.append(b"&l%d [" % i + b", ".join([b"*l%d" % (i - 1)] * width) + b"]")
    return b"[" + b", ".join(items) + b"]"


PAYLOADS = {
    "deep_sequences": b"[" * 3000 + b"]" * 3000,
    "deep_mappings": b"{a: " * 3000 + b"1" + b"}" * 3000,
    "recursive_alias_seq": b"&x [*x]",
    "recursive_alias_map": b"&x {a: *x}",
    "int_5000_digits": b"9" * 5000,
    "int_underscored": b"1_" * 3000 + b"1",
    "billion_laughs": _laughs(),
    "invalid_utf8": b'"caf\xe9 \xff\xfe"',
    "nul_bytes": b'"a\x00b"',
}


def _doc(where: str, value: bytes) -> bytes:
    if where == "stack":
        return b"schema: 1\nname: hostile\ndescription: " + value + b"\n"
    if where in ("lock", "stack_lock"):
        return b"lock: 1\nstack: proj\nplatform: " + value + b"\n"
    if where in ("project_config", "user_config"):
        return b"registry: " + value + b"\n"
    if where == "environment":
        return b"name: env\ndependencies:\n  - pip:\n      - " + value + b"\n"
    raise AssertionError(where)


def _place(tmp_path: Path, where: str, data: bytes | None, *, as_dir: bool = False, size: int | None = None):
    """Put the hostile file where dlenv reads it; returns (command args, env, cwd, file name to expect)."""
    cwd = tmp_path / "work"
    cwd.mkdir(exist_ok=True)
    env = {}
    if where == "stack":
        target, args = tmp_path / "stack.yaml", ["render", tmp_path / "stack.yaml"]
    elif where == "lock":
        stack = project(tmp_path)
        target, args = stack.with_name("dlenv.lock"), ["render", stack]
    elif where == "stack_lock":
        stack = project(tmp_path, filename="mystack.yaml")
        target, args = stack.with_name("mystack.lock"), ["show", stack]
    elif where == "project_config":
        target, args = cwd / ".dlenv.yaml", ["config"]
    elif where == "user_config":
        xdg = tmp_path / "xdg"
        (xdg / "dlenv").mkdir(parents=True, exist_ok=True)
        target, args, env = xdg / "dlenv" / "config.yaml", ["config"], {"XDG_CONFIG_HOME": str(xdg)}
    elif where == "environment":
        target, args = cwd / "environment.yml", ["init", "--from", "python", "-y"]
    else:
        raise AssertionError(where)
    if as_dir:
        target.mkdir()
    elif size is not None:
        with open(target, "wb") as handle:
            handle.write(_doc(where, b"x"))
            handle.truncate(size)
    else:
        target.write_bytes(data)
    return args, env, cwd, target.name


WHERES = ["stack", "lock", "stack_lock", "project_config", "user_config"]


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("where", WHERES)
def test_parser_limits_refused_in_one_line(dlenv, tmp_path, monkeypatch, where, payload):
    args, env, cwd, name = _place(tmp_path, where, _doc(where, PAYLOADS[payload]))
    monkeypatch.chdir(cwd)
    result, seconds = dlenv(*args, env=env)
    one_line_error(result, name)
    assert seconds < FAST_S, f"took {seconds:.1f}s"


@pytest.mark.parametrize("command", [["render"], ["show"], ["lock", "--check"]])
@pytest.mark.parametrize("payload", ["deep_sequences", "int_5000_digits", "recursive_alias_seq"])
def test_lock_parser_limits_for_every_engine_free_command(dlenv, tmp_path, command, payload):
    stack = project(tmp_path)
    stack.with_name("dlenv.lock").write_bytes(_doc("lock", PAYLOADS[payload]))
    result, _ = dlenv(*command, stack)
    one_line_error(result, "dlenv.lock")


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_environment_yml_parser_limits(tmp_path, payload):
    """`dlenv init` reads environment.yml: a hostile one is refused in one line, or skipped with
    a short note; either way no traceback, no flood, and nothing half-written."""
    args, _, cwd, _ = _place(tmp_path, "environment", _doc("environment", PAYLOADS[payload]))
    proc, _ = run_dlenv(args, cwd=cwd, home=tmp_path / "home")
    _check_init_outcome(proc, cwd, "environment.yml")


@pytest.mark.parametrize("where", WHERES)
def test_directory_where_a_file_is_expected(dlenv, tmp_path, monkeypatch, where):
    args, env, cwd, name = _place(tmp_path, where, None, as_dir=True)
    monkeypatch.chdir(cwd)
    result, _ = dlenv(*args, env=env)
    one_line_error(result, name)


@pytest.mark.parametrize("where", WHERES + ["environment"])
def test_sparse_3g_file_refused_by_size_before_reading(tmp_path, where):
    args, env, cwd, name = _place(tmp_path, where, None, size=3 << 30)
    proc, seconds = run_dlenv(args, cwd=cwd, home=tmp_path / "home", env=env)
    if where == "environment":
        _check_init_outcome(proc, cwd, name)   # init may also skip it with a note
    else:
        proc_one_line_error(proc, name)
    assert seconds < FAST_S, f"took {seconds:.1f}s"


@pytest.mark.parametrize("where", ["stack", "project_config", "user_config"])
def test_oversized_real_file_refused(dlenv, tmp_path, monkeypatch, where):
    """2 MB of valid YAML (one long list): over the size limit, refused before it is parsed."""
    data = _doc(where, b"[" + b", ".join([b"x"] * 700_000) + b"]")
    args, env, cwd, name = _place(tmp_path, where, data)
    monkeypatch.chdir(cwd)
    result, seconds = dlenv(*args, env=env)
    one_line_error(result, name)
    assert seconds < FAST_S


# --- 2. lock files: YAML types JSON cannot hash, wrong shapes --------------------------------------

def test_project_lock_fixture_is_locked(dlenv, tmp_path):
    """The base of the cases below: python.lock re-addressed to a project is accepted as its lock."""
    stack = project(tmp_path, WHOLE_BUILD)
    write_lock(stack.with_name("dlenv.lock"), project_lock())
    result, _ = dlenv("show", "--json", stack)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lock"]["state"] == "locked"


def _set(path: str, value):
    def mutate(doc):
        keys = path.split(".")
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return mutate


def _drop(key: str):
    return lambda doc: doc.pop(key)


_SHA = "a" * 64
LOCK_TYPES = {
    "inputs_timestamp": _set("inputs.built", datetime.date(2024, 1, 1)),
    "inputs_datetime": _set("inputs.built", datetime.datetime(2024, 1, 1, 12, 0)),
    "inputs_binary": _set("inputs.blob", b"\x00\x01binary"),
    "inputs_set": _set("inputs.tags", {"a", "b"}),
    "inputs_mixed_keys": _set("inputs.odd", {1: "a", "b": "c"}),
    "platform_timestamp": _set("platform.built", datetime.date(2024, 1, 1)),
    "platform_set": _set("platform.tags", {"x", "y"}),
    "platform_mixed_keys": _set("platform", {1: "a", "arch": "amd64"}),
    "base_binary": _set("base.blob", b"\xff\xfe"),
    "sources_timestamp": _set("sources.extra", {"package": "p", "version": "1.0", "file": "p.tar.gz",
                                                "sha256": _SHA, "size": datetime.date(2024, 1, 1)}),
    "python_tuple_tag": _set("platform.tuple", ("a", "b")),
}


@pytest.mark.parametrize("command", [["render"], ["show"], ["lock", "--check"]])
@pytest.mark.parametrize("case", sorted(LOCK_TYPES))
def test_lock_with_types_json_cannot_hash(dlenv, tmp_path, case, command):
    stack = project(tmp_path, WHOLE_BUILD)
    doc = project_lock()
    LOCK_TYPES[case](doc)
    dumper = yaml.dump if case == "python_tuple_tag" else yaml.safe_dump
    write_lock(stack.with_name("dlenv.lock"), doc, dumper=dumper)
    result, _ = dlenv(*command, stack)
    one_line_error(result, "dlenv.lock")


LOCK_SHAPES = {
    "top_list": lambda doc: ["lock", 1],
    "top_string": lambda doc: "lock",
    "top_number": lambda doc: 1,
    "missing_stack": _drop("stack"),
    "missing_inputs": _drop("inputs"),
    "missing_platform": _drop("platform"),
    "missing_base": _drop("base"),
    "missing_apt": _drop("apt"),
    "missing_sources": _drop("sources"),
    "missing_python": _drop("python"),
    "lock_format_string": _set("lock", "1"),
    "lock_format_two": _set("lock", 2),
    "inputs_list": _set("inputs", ["a"]),
    "base_list": _set("base", ["a"]),
    "base_packages_list": _set("base.packages", ["bash"]),
    "base_package_version_list": _set("base.packages.bash", ["5.2"]),
    "base_rootfs_number": _set("base.rootfs_sha256", 12),
    "apt_list": _set("apt", ["curl"]),
    "apt_build_list": _set("apt.build", ["curl"]),
    "apt_runtime_number": _set("apt.runtime", 3),
    "sources_list": _set("sources", ["x"]),
    "sources_entry_string": _set("sources.x", "package version file sha256"),
    "sources_entry_missing_sha": _set("sources.x", {"package": "p", "version": "1", "file": "f"}),
    "python_list": _set("python", ["x"]),
    "python_step_mapping": _set("python.python_packages", {"name": "x"}),
    "python_pin_string": _set("python.python_packages", ["tqdm==1"]),
    "python_pin_missing_sha": _set("python.python_packages", [{"name": "x", "version": "1", "file": "x.whl"}]),
    "python_pin_list_name": _set("python.python_packages", [{"name": ["x"], "version": "1", "file": "x.whl",
                                                              "sha256": _SHA}]),
    "platform_list": _set("platform", ["amd64"]),
}


def _reshape(doc, case):
    out = LOCK_SHAPES[case](doc)
    return doc if out is None else out


@pytest.mark.parametrize("command", [["render"], ["lock", "--check"]])
@pytest.mark.parametrize("case", sorted(LOCK_SHAPES))
def test_lock_with_wrong_shape(dlenv, tmp_path, case, command):
    stack = project(tmp_path, WHOLE_BUILD)
    write_lock(stack.with_name("dlenv.lock"), _reshape(project_lock(), case))
    result, _ = dlenv(*command, stack)
    one_line_error(result, "dlenv.lock")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "---\n...\n", "lock: 1\n"])
def test_empty_or_trivial_lock(dlenv, tmp_path, text):
    stack = project(tmp_path)
    stack.with_name("dlenv.lock").write_text(text)
    result, _ = dlenv("render", stack)
    one_line_error(result, "dlenv.lock")


@pytest.mark.parametrize("requirements", [5, None, "tqdm", {"a": 1}])
def test_lock_inputs_of_the_wrong_shape_do_not_crash_the_staleness_report(dlenv, tmp_path, requirements):
    """inputs_sha256 matches the (odd) inputs recorded in the file, so the lock is read as stale:
    explaining what changed must not crash on what it finds there."""
    stack = project(tmp_path, 'python_packages: ["tqdm==4.66.5"]\n')
    doc = project_lock()
    doc["inputs"]["python"] = {"python_packages": {"mode": "prefix", "requirements": requirements}}
    write_lock(stack.with_name("dlenv.lock"), doc)
    for command in (["show"], ["render"]):
        result, _ = dlenv(*command, stack)
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{command}: uncaught {type(result.exception).__name__}: {result.exception}"
        assert result.exit_code == 0, result.output
    one_line_error(dlenv("lock", "--check", stack)[0], "dlenv.lock")


# --- 3. odd files in a project's `files:` folders --------------------------------------------------

def files_project(tmp_path: Path, filename: str = "dlenv.yaml") -> Path:
    stack = project(tmp_path, "files: [src]\n", filename=filename)
    src = stack.parent / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    return stack


def test_files_fixture_renders(dlenv, tmp_path):
    stack = files_project(tmp_path)
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output
    assert "/workspace/src/" in result.stdout


def _dangling(src: Path) -> str:
    (src / "dangling").symlink_to("no-such-file")
    return "src/dangling"


def _dangling_nested(src: Path) -> str:
    (src / "sub").mkdir()
    (src / "sub" / "gone").symlink_to("../nothing-here")
    return "src/sub/gone"


def _loop(src: Path) -> str:
    (src / "loop-a").symlink_to("loop-b")
    (src / "loop-b").symlink_to("loop-a")
    return "src/loop-"


def _self_loop(src: Path) -> str:
    (src / "self").symlink_to("self")
    return "src/self"


def _socket(src: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "agent.sock"))
    finally:
        sock.close()
    return "src/agent.sock"


def _symlink_to_dir_out(src: Path) -> str:
    (src / "sub").mkdir()
    (src / "sub" / "etc").symlink_to("/etc")
    return "src/sub/etc"


ODD_FILES = {"dangling_symlink": _dangling, "dangling_nested": _dangling_nested, "symlink_loop": _loop,
             "symlink_self_loop": _self_loop, "unix_socket": _socket, "symlink_to_dir_outside": _symlink_to_dir_out}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_odd_file_in_copied_folder_refused_naming_it(dlenv, tmp_path, case):
    stack = files_project(tmp_path)
    rel = ODD_FILES[case](stack.parent / "src")
    result, _ = dlenv("render", stack)
    one_line_error(result, "dlenv.yaml", rel)


def test_fifo_in_copied_folder_does_not_hang(tmp_path):
    stack = files_project(tmp_path)
    os.mkfifo(stack.parent / "src" / "pipe")
    proc, _ = run_dlenv(["render", stack], cwd=tmp_path, home=tmp_path / "home")
    proc_one_line_error(proc, "src/pipe")


def test_fifo_named_directly_in_files_does_not_hang(tmp_path):
    stack = project(tmp_path, "files: [pipe]\n")
    os.mkfifo(stack.parent / "pipe")
    proc, _ = run_dlenv(["render", stack], cwd=tmp_path, home=tmp_path / "home")
    proc_one_line_error(proc, "pipe")


def test_huge_ignore_file_and_many_files_finish_quickly(tmp_path):
    stack = files_project(tmp_path)
    src = stack.parent / "src"
    for d in range(20):
        (src / f"d{d}").mkdir()
        for f in range(50):
            (src / f"d{d}" / f"f{f}.py").write_text("x = 1\n")
    patterns = [f"generated-{i}-*.tmp" for i in range(20_000)] + [f"/src/d{i}/f{i}.py" for i in range(20)]
    (stack.parent / ".dlenvignore").write_text("\n".join(patterns) + "\n")
    proc, seconds = run_dlenv(["render", stack], cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seconds < HANG_S


def test_sparse_3g_file_to_copy_refused_by_size_before_reading(tmp_path):
    stack = files_project(tmp_path)
    with open(stack.parent / "src" / "weights.bin", "wb") as handle:
        handle.truncate(3 << 30)
    proc, seconds = run_dlenv(["render", stack], cwd=tmp_path, home=tmp_path / "home")
    proc_one_line_error(proc, "dlenv.yaml")
    assert seconds < FAST_S


def test_sparse_3g_ignore_file_refused_by_size(tmp_path):
    stack = files_project(tmp_path)
    with open(stack.parent / ".dlenvignore", "wb") as handle:
        handle.truncate(3 << 30)
    proc, seconds = run_dlenv(["render", stack], cwd=tmp_path, home=tmp_path / "home")
    proc_one_line_error(proc, ".dlenvignore")
    assert seconds < FAST_S


@pytest.mark.parametrize("filename", ["dlenv.yaml", "mystack.yaml"])
def test_nested_symlink_out_names_the_stack_file_and_the_link(dlenv, tmp_path, filename):
    stack = files_project(tmp_path, filename)
    (stack.parent / "src" / "sub").mkdir()
    (stack.parent / "src" / "sub" / "passwd").symlink_to("/etc/passwd")
    result, _ = dlenv("render", stack)
    one_line_error(result, filename, "src/sub/passwd")


def test_symlink_inside_the_folder_is_still_copied(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / "src" / "alias.py").symlink_to("train.py")
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output


# --- 4. terminal injection ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TERMINAL_CASES))
def test_control_sequences_in_a_stack_are_escaped(dlenv, name):
    result, _ = dlenv("render", HOSTILE / "terminal" / name)
    line = one_line_error(result)
    for expected in TERMINAL_CASES[name]["expect"]:
        assert expected in line, f"{expected!r} not in {line!r}"


TERMINAL_REFS = {
    "esc_name": "\x1b[31mred",
    "osc_title": "\x1b]0;pwned\x07",
    "newline_forge": "nope\ndlenv: error: forged",
    "cr_forge": "nope\r\x1b[2Kdlenv: error: forged",
    "esc_path": "./\x1b[31mmissing.yaml",
    "newline_path": "./missing\ndlenv: error: forged.yaml",
    "c1_csi": "\x9b31mred",
}


@pytest.mark.parametrize("case", sorted(TERMINAL_REFS))
@pytest.mark.parametrize("command", ["render", "show"])
def test_control_sequences_in_a_stack_argument_are_escaped(dlenv, case, command):
    result, _ = dlenv(command, TERMINAL_REFS[case])
    line = one_line_error(result)
    if "\x1b" in TERMINAL_REFS[case]:
        assert any(e in line for e in ESCAPED_ESC), f"ESC not shown escaped: {line!r}"


def test_control_sequences_in_a_stack_file_name_are_escaped(dlenv, tmp_path):
    path = tmp_path / "\x1b]0;pwned\x07\x1b[31mstack.yaml"
    path.write_text("schema: 1\nname: x\nbogus: 1\n")
    line = one_line_error(dlenv("render", path)[0], "stack.yaml")
    assert any(e in line for e in ESCAPED_ESC), line


def test_control_sequences_in_a_copied_file_name_are_escaped(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / "src" / "\x1b[31mevil\nline").symlink_to("/etc/passwd")
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml")
    assert any(e in line for e in ESCAPED_ESC), line


@pytest.mark.parametrize("field,value", [
    ("env", '{A: "\\e[31mred"}'),
    ("env", '{A: "\\e]0;pwned\\a"}'),
    ("env", '{A: "\\x9b31m"}'),
    ("description", '"\\e]0;pwned\\a"'),
    ("description", '"\\e[2J\\e[Hcleared"'),
])
def test_control_sequences_in_values_never_reach_the_output_raw(dlenv, tmp_path, field, value):
    """An ENV or LABEL value with a control character: refused in one line, or rendered without it."""
    stack = project(tmp_path, f"{field}: {value}\n")
    result, _ = dlenv("render", stack)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_clean(result.output)
    if result.exit_code != 0:
        one_line_error(result, field)


def test_control_sequences_in_a_run_command_are_rendered_escaped(dlenv, tmp_path):
    stack = project(tmp_path, 'run: ["echo \\e[31mred\\ndone"]\n')
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output
    assert_clean(result.output)


def test_control_sequences_in_a_lock_field_are_escaped(dlenv, tmp_path):
    stack = project(tmp_path, WHOLE_BUILD)
    doc = project_lock()
    doc["apt"]["build"]["\x1b]0;pwned\x07\x1b[31mevil"] = "1.0"
    write_lock(stack.with_name("dlenv.lock"), doc)
    line = one_line_error(dlenv("render", stack)[0], "dlenv.lock")
    assert any(e in line for e in ESCAPED_ESC), line


def test_control_sequences_in_a_stale_lock_are_escaped(dlenv, tmp_path):
    """What changed is echoed from the lock file: its values are data, not terminal input."""
    stack = project(tmp_path, WHOLE_BUILD)
    doc = project_lock()
    doc["inputs"]["components"]["python"] = "\x1b[31m3.11\ndlenv: error: forged"
    write_lock(stack.with_name("dlenv.lock"), doc)
    line = one_line_error(dlenv("lock", "--check", stack)[0], "dlenv.lock")
    assert any(e in line for e in ESCAPED_ESC), line
    result, _ = dlenv("show", stack)
    assert result.exit_code == 0, result.output
    assert_clean(result.output)


@pytest.mark.parametrize("stack_name", ["[/red]", "[/]", "[bold", "[link=file:///etc/passwd]x"])
def test_rich_markup_in_a_stale_lock_is_not_interpreted(dlenv, tmp_path, stack_name):
    stack = project(tmp_path, WHOLE_BUILD)
    write_lock(stack.with_name("dlenv.lock"), project_lock(stack=stack_name))
    result, _ = dlenv("show", stack)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 0, result.output
    assert stack_name.split("]")[0] in result.output


@pytest.mark.parametrize("folder", ["p[/red]", "p[/]x"])
def test_rich_markup_in_a_project_path_is_not_interpreted(dlenv, tmp_path, folder):
    stack = project(tmp_path, folder=folder)
    result, _ = dlenv("show", stack)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 0, result.output
    assert folder in result.output


@pytest.mark.parametrize("text", ['"\\e[31mred": "x"', 'registry: "x"\n"\\e]0;pwned\\a": 1',
                                  '"a\\ndlenv: error: forged": 1'])
def test_control_sequences_in_project_config_are_escaped(dlenv, tmp_path, monkeypatch, text):
    (tmp_path / ".dlenv.yaml").write_text(text + "\n")
    monkeypatch.chdir(tmp_path)
    one_line_error(dlenv("config")[0], ".dlenv.yaml")


@pytest.mark.parametrize("key,value", [("ca_bundle", "/tmp/\\e]0;pwned\\a"), ("ca_bundle", "/tmp/\\e[31mred"),
                                       ("ca_bundle", "/tmp/\\x9b31m")])
def test_control_sequences_in_an_accepted_setting_never_reach_the_output_raw(dlenv, tmp_path, monkeypatch, key, value):
    (tmp_path / ".dlenv.yaml").write_text(f'{key}: "{value}"\n')
    monkeypatch.chdir(tmp_path)
    for args in (["config"], ["config", "--json"]):
        result, _ = dlenv(*args)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert_clean(result.output)
        if result.exit_code != 0:
            one_line_error(result, ".dlenv.yaml", key)


def _catalog(tmp_path: Path, name: str, text: bytes) -> dict:
    stacks = tmp_path / "catalog"
    stacks.mkdir(exist_ok=True)
    (stacks / f"{name}.yaml").write_bytes(text)
    return {"DLENV_STACKS_DIR": str(stacks)}


def test_control_sequences_in_a_catalog_description_never_reach_the_list_raw(dlenv, tmp_path):
    env = _catalog(tmp_path, "odd", b'schema: 1\nname: odd\ncomponents: {python: "3.11"}\n'
                                   b'description: "\\e]0;pwned\\a \\x9b31m"\n')
    result, _ = dlenv("list", "--markdown", env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_clean(result.output)
    if result.exit_code != 0:
        one_line_error(result, "odd.yaml")


@pytest.mark.parametrize("payload", ["deep_sequences", "recursive_alias_seq", "int_5000_digits"])
def test_hostile_catalog_stack_refused_by_list(dlenv, tmp_path, payload):
    env = _catalog(tmp_path, "odd", _doc("stack", PAYLOADS[payload]))
    one_line_error(dlenv("list", "--markdown", env=env)[0], "odd.yaml")


# --- 5. dlenv init ------------------------------------------------------------------------------------

def _check_init_outcome(proc_or_result, folder: Path, *names: str) -> None:
    """Refused in one line (and nothing written), or written (a valid stack) with a short report."""
    if isinstance(proc_or_result, subprocess.CompletedProcess):
        code, out, err = proc_or_result.returncode, proc_or_result.stdout, proc_or_result.stderr
        assert "Traceback" not in err, err[-3000:]
    else:
        result = proc_or_result
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"uncaught {type(result.exception).__name__}: {result.exception!s:.300}"
        code, out, err = result.exit_code, result.stdout, result.stderr
    assert len(out) + len(err) < INIT_OUTPUT, f"{len(out) + len(err)} characters of output: {(out + err)[:300]}"
    assert_clean(out + err)
    written = folder / "dlenv.yaml"
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
    assert not leftovers, leftovers
    if code == 0:
        assert written.is_file()
        return
    assert code == 1, (code, err[-1000:])
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlenv: error: "), err[:2000]
    for name in names:
        assert name in lines[0], lines[0]
    assert not written.exists(), "init wrote dlenv.yaml and then failed"


def _assert_written_stack_is_valid(dlenv, folder: Path) -> None:
    result, _ = dlenv("show", "--json", folder / "dlenv.yaml")
    assert result.exit_code == 0, f"init wrote a dlenv.yaml that dlenv refuses: {result.stderr[:500]}"


HOSTILE_NAMES = {
    "colon": "a: b", "double_quote": '"', "single_quote": "'", "brace": "{", "bracket": "[x]",
    "newline_key": "x\nextends: evil", "newline_dup": "x\nname: y", "comment": "x # c", "anchor": "&a",
    "alias": "*a", "tag": "!!binary", "long": "a" * 5000, "esc": "\x1b[31mred", "tab": "a\tb",
    "upper": "UPPER", "leading_space": " x", "document_end": "x\n...", "flow_seq": "[a, b]",
    "percent": "%YAML", "catalog_clash": "chainermn", "catalog_clash_python": "python",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_init_name_that_breaks_yaml_is_refused_before_writing(dlenv, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    result, _ = dlenv("init", "--from", "python", "--name", HOSTILE_NAMES[case])
    one_line_error(result, "name")
    assert not (tmp_path / "dlenv.yaml").exists()


def test_init_with_a_plain_name_still_works(dlenv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, _ = dlenv("init", "--from", "python", "--name", "my-proj")
    assert result.exit_code == 0, result.output
    _assert_written_stack_is_valid(dlenv, tmp_path)


def _png(folder: Path) -> str:
    (folder / "logo.png").write_bytes((HOSTILE / "logo.png").read_bytes())
    return "./logo.png"


def _empty(folder: Path) -> str:
    (folder / "empty.yaml").write_text("")
    return "empty.yaml"


def _yaml_list(folder: Path) -> str:
    (folder / "list.yaml").write_text("- schema\n- name\n")
    return "list.yaml"


def _text(folder: Path) -> str:
    (folder / "notes.yaml").write_text("just some notes\n")
    return "notes.yaml"


def _invalid_stack(folder: Path) -> str:
    (folder / "bad.yaml").write_text("schema: 1\nname: Bad Name\n")
    return "bad.yaml"


def _binary(folder: Path) -> str:
    (folder / "blob.yml").write_bytes(bytes(range(256)))
    return "blob.yml"


def _other_lock(folder: Path) -> str:
    (folder / "other.yaml").write_text(PYTHON_LOCK.read_text())
    return "other.yaml"


NOT_STACKS = {"png": _png, "empty": _empty, "yaml_list": _yaml_list, "text": _text,
              "invalid_stack": _invalid_stack, "binary": _binary, "a_lock_file": _other_lock}


@pytest.mark.parametrize("case", sorted(NOT_STACKS))
def test_init_from_a_file_that_is_not_a_stack(dlenv, tmp_path, monkeypatch, case):
    work = tmp_path / "repo"
    work.mkdir()
    ref = NOT_STACKS[case](work)
    monkeypatch.chdir(work)
    result, _ = dlenv("init", "--from", ref)
    one_line_error(result, Path(ref).name)
    assert not (work / "dlenv.yaml").exists()


@pytest.mark.parametrize("filename", ["a: b.yaml", "x #y.yaml", "q'\"x.yaml", "{x}.yaml", "a\tb.yaml"])
def test_init_from_a_stack_whose_path_breaks_yaml(dlenv, tmp_path, monkeypatch, filename):
    """A real parent stack with an awkward file name: refused, or written so that it still loads."""
    work = tmp_path / "repo"
    work.mkdir()
    (work / filename).write_text("schema: 1\nname: parent\nextends: python\n")
    monkeypatch.chdir(work)
    result, _ = dlenv("init", "--from", filename)
    _check_init_outcome(result, work)
    if result.exit_code == 0:
        _assert_written_stack_is_valid(dlenv, work)


def _alias_tree_env(levels: int = 5, width: int = 10) -> str:
    lines = ['a0: &a0 "xxxxxxxxxx"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"dependencies:\n  - pip:\n      - *a{levels}\n      - *a{levels}\n  - *a{levels}")
    return "\n".join(lines) + "\n"


INIT_INPUTS = {
    "env_alias_tree": ("environment.yml", _alias_tree_env()),
    "env_recursive_alias": ("environment.yml", "dependencies: &x\n  - pip: *x\n  - *x\n"),
    "env_many_conda_packages": ("environment.yml",
                                "dependencies:\n" + "".join(f"  - conda-pkg-{i}\n" for i in range(5000))),
    "env_long_entries": ("environment.yml", "dependencies:\n  - pip:\n" + "".join(
        f"      - {'x' * 3000}{i} @ file:///x\n" for i in range(20))),
    "req_long_requirement": ("requirements.txt", "a" * 5000 + "==1.0\n"),
    "req_600_packages": ("requirements.txt", "".join(f"pkg{i}==1.0\n" for i in range(600))),
    "req_many_skipped": ("requirements.txt", "".join(f"-e ./local{i}\n" for i in range(20_000))),
    "req_control_chars": ("requirements.txt", ("numpy\n\x1b]0;pwned\x07evil\nrequests==2.0 \x1b[31mred\n"
                                               "ok==1\r\x1b[2Kforged\n\x9b31mx\n")),
    "pyproject_control_chars": ("pyproject.toml", '[project]\ndependencies = ["\\u001b[31mred", "numpy"]\n'),
    "env_control_chars": ("environment.yml", 'dependencies:\n  - "\\e]0;pwned\\a"\n  - pip: ["\\e[31mx"]\n'),
}


@pytest.mark.parametrize("case", sorted(INIT_INPUTS))
def test_init_report_stays_small_and_clean_and_writes_a_valid_stack(dlenv, tmp_path, monkeypatch, case):
    filename, text = INIT_INPUTS[case]
    (tmp_path / filename).write_text(text)
    monkeypatch.chdir(tmp_path)
    result, seconds = dlenv("init", "--from", "python", "-y")
    _check_init_outcome(result, tmp_path)
    assert seconds < FAST_S
    if result.exit_code == 0:
        _assert_written_stack_is_valid(dlenv, tmp_path)


def test_init_environment_alias_bomb_does_not_explode(tmp_path):
    """A billion laughs in environment.yml: refused or skipped, not expanded into memory."""
    (tmp_path / "environment.yml").write_bytes(b"dependencies:\n  - pip:\n      - " + _laughs() + b"\n")
    proc, seconds = run_dlenv(["init", "--from", "python", "-y"], cwd=tmp_path, home=tmp_path / "home")
    _check_init_outcome(proc, tmp_path)
    assert seconds < FAST_S


# --- 6. security: a stack must not set what the build itself controls ---------------------------------

RESERVED_ENV = ["DLENV_CONTENT_HASH", "DLENV_ANYTHING", "DLENV_STATE_DIR", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
                "PIP_TRUSTED_HOST", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                "no_proxy", "SOURCE_DATE_EPOCH"]


@pytest.mark.parametrize("name", RESERVED_ENV)
def test_stack_env_cannot_set_a_build_controlled_name(dlenv, tmp_path, name):
    stack = project(tmp_path, f'env:\n  {name}: "attacker"\n')
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", name)
    assert "env" in line


def test_stack_env_cannot_set_any_arg_of_the_rendered_dockerfile(dlenv, tmp_path):
    """Whatever the Dockerfile declares as ARG (today and after any template change) is refused."""
    stack = project(tmp_path, 'python_packages: ["tqdm==4.66.5"]\n')
    rendered, _ = dlenv("render", stack)
    assert rendered.exit_code == 0, rendered.output
    args = sorted({m.group(1) for m in re.finditer(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)", rendered.stdout, re.MULTILINE)})
    assert "DLENV_CONTENT_HASH" in args and "PIP_INDEX_URL" in args
    accepted = []
    for name in args:
        bad = project(tmp_path, f'env:\n  {name}: "attacker"\n', folder=f"p-{name}")
        result, _ = dlenv("render", bad)
        if result.exit_code == 0 or result.exception is not None and not isinstance(result.exception, SystemExit):
            accepted.append(name)
    assert not accepted, f"stack env may set Dockerfile ARGs: {accepted}"


def test_content_hash_label_cannot_be_forged_through_env(dlenv, tmp_path):
    stack = project(tmp_path, 'env:\n  DLENV_CONTENT_HASH: "0000000000000000"\n')
    result, _ = dlenv("render", stack)
    assert result.exit_code != 0 or 'DLENV_CONTENT_HASH="0000' not in result.stdout, \
        "the stack's ENV overrides ARG DLENV_CONTENT_HASH: the content-hash label is forged"


# --- 7. accepted but wrong ---------------------------------------------------------------------------

def test_env_path_prepend_works_or_is_refused_with_a_hint(dlenv, tmp_path):
    stack = project(tmp_path, 'env:\n  PATH: "/opt/x:$PATH"\n')
    result, _ = dlenv("render", stack)
    if result.exit_code != 0:
        one_line_error(result, "PATH")
        return
    assert "$PATH" not in result.stdout, "PATH gets a literal $PATH instead of the previous value"
    path_values = re.findall(r'\bPATH="([^"]*)"', result.stdout)
    assert path_values and "/opt/x" in path_values[-1] and "/opt/venv/bin" in path_values[-1], path_values


@pytest.mark.parametrize("dest", ["/etc/passwd", "/etc/shadow", "/etc/sudoers", "/etc/ld.so.preload",
                                  "/etc/profile.d/evil.sh", "/usr/bin/python3", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                  "/usr/local/bin/pip", "/bin/bash", "/sbin/init", "/lib/ld-linux.so.2",
                                  "/opt/venv/bin/python", "/etc"])
def test_files_destination_over_a_system_path_refused(dlenv, tmp_path, dest):
    stack = project(tmp_path, f"files:\n  - {{src: x.txt, dest: {dest}}}\n")
    (stack.parent / "x.txt").write_text("x\n")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", dest)


@pytest.mark.parametrize("dest", ["/workspace/x.txt", "/home/dlenv/x.txt", "/opt/project/x.txt"])
def test_files_destination_in_user_space_accepted(dlenv, tmp_path, dest):
    stack = project(tmp_path, f"files:\n  - {{src: x.txt, dest: {dest}}}\n")
    (stack.parent / "x.txt").write_text("x\n")
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output


ALWAYS_IGNORED_ENTRIES = {".git": "dir", ".git/config": "file", ".hg": "dir", "__pycache__": "dir",
                          ".dlenvignore": "file", "src/.git": "dir"}


@pytest.mark.parametrize("entry", sorted(ALWAYS_IGNORED_ENTRIES))
def test_files_naming_an_always_ignored_path_is_not_silently_dropped(dlenv, tmp_path, entry):
    stack = project(tmp_path, f"files: [{entry}]\n")
    target = stack.parent / entry
    if ALWAYS_IGNORED_ENTRIES[entry] == "dir":
        target.mkdir(parents=True)
        (target / "config").write_text("x\n")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x\n")
    result, _ = dlenv("render", stack)
    if result.exit_code != 0:
        one_line_error(result, "dlenv.yaml", entry)
        return
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("dlenv: warning:")]
    assert any(entry in ln for ln in warnings), f"files: [{entry}] copied nothing and said nothing"


@pytest.mark.parametrize("name", ["chainermn", "python", "datascience", "chainer-gpu"])
def test_project_stack_named_like_a_catalog_stack_refused(dlenv, tmp_path, name):
    stack = project(tmp_path, name=name, extends="python" if name != "python" else "chainer")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", name)


def test_project_stack_with_its_own_name_accepted(dlenv, tmp_path):
    stack = project(tmp_path, name="my-own-project")
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output
