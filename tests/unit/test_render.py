"""Rendering: deterministic, content hash independent of spelling and location, stages kept apart,
every user value quoted for the shell or the Dockerfile."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
import yaml

from builder import paths
from builder.plan.plan import plan
from builder.plan.catalog import Catalog
from builder.errors import RenderError
from builder.names import CA_BUNDLE_PATH
from builder.plan.render import content_hash, dockerfile_string, render_context
from builder.plan.resolve import resolve
from builder.spec.stack import load_stack

from dlenv_unit import CATALOG_NAMES, GOOD


def stages(dockerfile: str) -> dict:
    """`{stage name: text}` split at each `FROM ... AS name` line."""
    out, name = {}, None
    for line in dockerfile.splitlines(keepends=True):
        m = re.match(r"^FROM \S+ AS (\S+)\s*$", line)
        if m:
            name = m.group(1)
            out[name] = ""
        if name:
            out[name] += line
    return out


def logical_lines(text: str) -> list:
    """Dockerfile instructions with their `\\`-continued lines joined (comments dropped)."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1]
            continue
        out.append(cur + line)
        cur = ""
    return [ln for ln in out if ln.strip()]


def hash_of(ref) -> str:
    return plan(str(ref)).content_hash


@pytest.fixture(scope="module")
def catalog_plans():
    return {name: plan(name) for name in CATALOG_NAMES}


# --- determinism and identity ---------------------------------------------------------------

@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_render_is_deterministic(name):
    merged = load_stack(name, paths.stacks_dir())
    first = render_context(resolve(merged, Catalog()))
    second = render_context(resolve(load_stack(name, paths.stacks_dir()), Catalog()))
    assert first.dockerfile == second.dockerfile
    assert first.files == second.files
    assert content_hash(first) == content_hash(second)
    assert re.fullmatch(r"[0-9a-f]{64}", content_hash(first))


def test_catalog_stacks_have_distinct_hashes(catalog_plans):
    hashes = {p.content_hash for p in catalog_plans.values()}
    assert len(hashes) == len(CATALOG_NAMES)


def test_hash_ignores_key_order_quoting_flow_style_and_comments():
    a, b = plan(str(GOOD / "equivalent_a.yaml")), plan(str(GOOD / "equivalent_b.yaml"))
    da, db = (yaml.safe_load((GOOD / f).read_text()) for f in ("equivalent_a.yaml", "equivalent_b.yaml"))
    assert da["apt_packages"] != db["apt_packages"]  # apt order is not meaningful: it is sorted
    da["apt_packages"].sort(), db["apt_packages"].sort()
    assert da == db
    assert (GOOD / "equivalent_a.yaml").read_text() != (GOOD / "equivalent_b.yaml").read_text()
    assert a.context.dockerfile == b.context.dockerfile
    assert a.content_hash == b.content_hash


def test_hash_ignores_where_the_stack_file_lives_and_how_the_parent_is_named(tmp_path):
    original = GOOD / "equivalent_a.yaml"
    moved = tmp_path / "elsewhere" / "dlenv.yaml"
    moved.parent.mkdir()
    shutil.copy(original, moved)
    by_path = tmp_path / "by-path.yaml"
    by_path.write_text(original.read_text().replace("extends: python",
                                                    f"extends: {paths.stacks_dir() / 'python.yaml'}"))
    assert hash_of(moved) == hash_of(original) == hash_of(by_path)


@pytest.mark.parametrize("old,new", [
    ('numpy: "1.26.4"', 'numpy: "2.1.3"'),
    ("requests==2.32.3", "requests==2.32.2"),
    ("scipy>=1.11", "scipy>=1.12"),
    ('OMP_NUM_THREADS: "1"', 'OMP_NUM_THREADS: "2"'),
    ("GREETING: hello", "GREETING: hello2"),
    ("  - curl\n", "  - wget\n"),
    ('  cython: "3.0.12"\n', '  cython: "3.0.12"\n  setuptools: "75.8.0"\n'),
    ("extends: python\n", "extends: python\nbase:\n  bootstrap: {suite: trixie}\n"),
    ("extends: python\n", "extends: python\nbase:\n  bootstrap: {suite: bookworm, epoch: 1700000000}\n"),
    ("description: Two spellings", "description: 2 spellings"),
])
def test_any_pin_change_changes_the_hash(tmp_path, old, new):
    original = (GOOD / "equivalent_a.yaml").read_text()
    assert old in original
    changed = tmp_path / "changed.yaml"
    changed.write_text(original.replace(old, new, 1))
    assert hash_of(changed) != hash_of(GOOD / "equivalent_a.yaml")


def test_hash_is_not_the_local_base_image_id():
    ctx = plan("python").context
    assert "sha256:" not in ctx.dockerfile
    assert ctx.base == {"bootstrap": {"suite": "bookworm", "variant": "minbase"}}


# --- stages, user, secrets ------------------------------------------------------------------

@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_two_stages_and_a_non_root_runtime_user(catalog_plans, name):
    dockerfile = catalog_plans[name].context.dockerfile
    parts = stages(dockerfile)
    assert list(parts) == ["build", "runtime"]
    runtime = parts["runtime"]
    users = re.findall(r"^USER (\S+)\s*$", runtime, flags=re.M)
    assert users, "the runtime stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    useradd = re.search(r"useradd .*--uid (\d+) .*?(\w+)\s*\\?$", runtime, flags=re.M)
    assert useradd, "the runtime user is never created"
    assert user in (useradd.group(1), useradd.group(2))
    assert int(useradd.group(1)) >= 1000
    assert dockerfile.rstrip().endswith('CMD ["bash"]')
    assert dockerfile.index(f"USER {users[-1]}") > dockerfile.index("AS runtime")


# --- reproducible files (issue #17): what differed between two no-cache builds of one lock ----------

@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_files_that_differed_between_builds_are_fixed(catalog_plans, name):
    p = catalog_plans[name]
    runtime = stages(p.context.dockerfile)["runtime"]
    epoch = re.search(r"SOURCE_DATE_EPOCH=(\d+)", p.context.dockerfile).group(1)
    assert f"SOURCE_DATE_EPOCH={epoch} useradd " in runtime          # /etc/shadow's day
    assert "/var/cache/ldconfig/aux-cache /etc/ssh/ssh_host_*" in runtime
    assert not [line for line in logical_lines(runtime) if line.startswith("ENV ") and "SOURCE_DATE_EPOCH=" in line]
    for line in logical_lines(p.context.dockerfile):
        for target in re.findall(r"pip install [^&]*--target (\S+)", line):  # pip's temp folder in bytecode
            kept = not target.startswith("/usr/src/")                        # a step's own scratch goes
            assert not kept or ("--no-compile" in line and f"-m compileall -q {target}" in line), line[:160]
        if "/openmpi/bin/mpicc" in line and "pip" in line:               # the sdist's temp folder in DWARF
            assert "CFLAGS=-g0" in line
        if "openmpi-" in line and "./configure" in line:                 # the build container's name
            assert "export HOSTNAME=dlenv-build PATH=\"/usr/src/openmpi/fixed-host:$PATH\"" in line


def test_no_template_pipes_into_an_early_exiting_grep():
    """`cmd | grep -q` under pipefail fails at random: grep exits at the first match and cmd gets
    SIGPIPE (ucx_info: 54 failures in 200 runs). Grep a file instead."""
    offenders = []
    for path in sorted(paths.templates_dir().rglob("*.j2")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\|\s*grep\s+(-\w*q|--quiet)", line) or re.search(r"\|\s*head\b", line):
                offenders.append(f"{path.name}:{n}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_runtime_stage_has_no_ca_bundle_and_no_pip_cert(catalog_plans, name):
    parts = stages(catalog_plans[name].context.dockerfile)
    assert "ca.crt" in parts["build"] and "PIP_CERT" in parts["build"]  # so the split is right
    assert "ca.crt" not in parts["runtime"]
    assert "PIP_CERT" not in parts["runtime"]
    assert "dlenv-build" not in parts["runtime"]
    assert "PIP_INDEX_URL" not in parts["runtime"]


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_ca_bundle_is_not_a_hashed_file(catalog_plans, name):
    files = catalog_plans[name].context.files
    assert CA_BUNDLE_PATH not in files
    assert not any(k.endswith(".crt") for k in files)


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_runtime_copies_from_build_only_prefixes_and_the_venv(catalog_plans, name):
    runtime = stages(catalog_plans[name].context.dockerfile)["runtime"]
    for src, dst in re.findall(r"^COPY --from=build (\S+) (\S+)$", runtime, flags=re.M):
        assert src == dst and (src.startswith("/opt/")), (src, dst)


def test_python_stack_runtime_gets_the_venv(catalog_plans):
    runtime = stages(catalog_plans["python"].context.dockerfile)["runtime"]
    assert "/opt/venv/bin" in runtime
    assert "COPY --from=build /opt/venv /opt/venv" in runtime


def test_chainer_runtime_gets_the_venv(catalog_plans):
    runtime = stages(catalog_plans["chainer"].context.dockerfile)["runtime"]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime


# --- quoting --------------------------------------------------------------------------------

def test_every_python_package_reaches_pip_shell_quoted():
    values = yaml.safe_load((GOOD / "python_packages.yaml").read_text())["python_packages"]
    build = stages(plan(str(GOOD / "python_packages.yaml")).context.dockerfile)["build"]
    lines = [ln for ln in logical_lines(build) if "pip install" in ln and "attrs" in ln]
    assert len(lines) == 1, lines
    line = lines[0]
    for value in values:
        assert shlex.quote(value) in line
        if re.search(r"[<>\[\]!~,]", value):
            assert f"'{value}'" in line, f"{value} is not quoted in {line!r}"
    command = line.removeprefix("RUN ")
    assert shlex.split(command)[-len(values):] == values


def unescape_dockerfile_string(word: str) -> str:
    assert word.startswith('"') and word.endswith('"'), word
    inner = word[1:-1]
    assert not re.search(r'(?<!\\)(?:\\\\)*"', inner), f"unescaped quote in {word}"
    assert not re.search(r"(?<!\\)(?:\\\\)*\$", inner), f"unescaped $ in {word}"
    return re.sub(r"\\(.)", r"\1", inner)


def test_env_values_are_escaped_in_the_dockerfile():
    env = yaml.safe_load((GOOD / "env_quoting.yaml").read_text())["env"]
    assert env["BACKSLASH"] == "C:\\temp\\new\\"
    runtime = stages(plan(str(GOOD / "env_quoting.yaml")).context.dockerfile)["runtime"]
    found = {}
    for line in runtime.splitlines():
        m = re.match(r'^(?:ENV )?\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*")(?: \\)?$', line.strip())
        if m and m.group(1) in env:
            found[m.group(1)] = m.group(2)
    assert set(found) == set(env)
    for key, value in env.items():
        assert unescape_dockerfile_string(found[key]) == value, key
    assert found["DOLLAR"] == '"cost \\$HOME \\${USER} \\$(id) `id`"'
    assert found["QUOTES"] == '"say \\"hi\\" and \'bye\'"'
    assert found["BACKSLASH"] == '"C:\\\\temp\\\\new\\\\"'


def test_env_values_are_shell_quoted_in_the_login_profile():
    env = yaml.safe_load((GOOD / "env_quoting.yaml").read_text())["env"]
    profile = plan(str(GOOD / "env_quoting.yaml")).context.files["dlenv-runtime/profile.sh"].decode()
    exported = {}
    for line in profile.splitlines():
        if line.startswith("export "):
            words = shlex.split(line)
            assert len(words) == 2, line
            key, _, value = words[1].partition("=")
            exported[key] = value
    for key, value in env.items():
        assert exported[key] == value


@pytest.mark.parametrize("value,expected", [
    ("plain", '"plain"'),
    ("$HOME", '"\\$HOME"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("\\$", '"\\\\\\$"'),
    ("", '""'),
])
def test_dockerfile_string(value, expected):
    assert dockerfile_string(value) == expected
    assert unescape_dockerfile_string(dockerfile_string(value)) == value


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b"])
def test_dockerfile_string_refuses_multi_line_values(value):
    with pytest.raises(RenderError):
        dockerfile_string(value)


def test_apt_packages_of_the_stack_reach_both_stages_quoted():
    ctx = plan(str(GOOD / "equivalent_a.yaml")).context
    parts = stages(ctx.dockerfile)
    for stage in ("build", "runtime"):
        line = next(ln for ln in logical_lines(parts[stage]) if "apt-get install" in ln)
        assert "curl" in shlex.split(line.removeprefix("RUN ")) and "less" in shlex.split(line.removeprefix("RUN "))


def test_build_time_commands_render_in_exec_form_as_the_image_user(tmp_path):
    """A `run:` command reaches the Dockerfile as one JSON-quoted argument of bash: quotes, `$`,
    newlines and `&&` stay the user's shell text, never Dockerfile syntax; as_root drops runuser."""
    import json as _json
    from builder.plan.plan import plan
    stack = tmp_path / "dlenv.yaml"
    stack.write_text('schema: 1\nname: rt\nextends: python\nrun:\n'
                     '  - "echo \\"$HOME\\" it\'s && printf \'%s\\\\n\' x > ~/f"\n'
                     '  - command: |\n      install -d -o dlenv /scratch\n      touch /scratch/a\n    as_root: true\n')
    df = plan(str(stack)).context.dockerfile
    runs = [ln[len("RUN "):] for ln in df.splitlines() if ln.startswith('RUN ["')]
    assert len(runs) == 2
    first, second = (_json.loads(r) for r in runs)
    assert first[:6] == ["runuser", "-u", "dlenv", "--", "env", "HOME=/home/dlenv"]
    assert first[6:10] == ["bash", "-o", "pipefail", "-c"] and first[10] == "echo \"$HOME\" it's && printf '%s\\n' x > ~/f"
    assert second == ["bash", "-o", "pipefail", "-c", "install -d -o dlenv /scratch\ntouch /scratch/a\n"]
    # after the copied files, before the labels; the commands change the content hash
    assert df.index('RUN ["runuser"') > df.index("FROM dlenv/python:") and df.index('RUN ["runuser"') < df.index("LABEL")
    before = plan(str(stack)).content_hash
    stack.write_text(stack.read_text().replace("touch /scratch/a", "touch /scratch/b"))
    assert plan(str(stack)).content_hash != before
