"""Property-based fuzzing of every YAML file dlenv reads (#18): random documents and stack-,
lock-, config- and environment.yml-shaped mappings (random types, depths, shared and recursive
aliases, control characters, big integers, long strings, raw byte damage), written where dlenv
reads them, then the CLI in-process. The property: exit 0, or exit 1 with exactly one
`dlenv: error:` line; never a traceback; never a raw control character in the output.

Bounded and repeatable for CI: derandomized, no example database, no shrinking (a failure prints
the generated example; the same seed finds it again), a fixed number of examples per target.
Needs `hypothesis` (add it to the `test` extra of pyproject.toml)."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra needs it)")
try:  # its caches go to a temporary folder, not into the checkout
    from hypothesis.configuration import set_hypothesis_home_dir
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "dlenv-hypothesis")
except ImportError:  # pragma: no cover - older hypothesis
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "dlenv-hypothesis"))
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_hostile import RAW_CONTROL, WHOLE_BUILD, project, project_lock, write_lock

EXAMPLES = int(os.environ.get("DLENV_FUZZ_EXAMPLES", "150"))   # per target; the lock target runs half
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate], print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

# --- values ---------------------------------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\r", "\n", "\t", "\x1b", "\x1b[31m", "\x1b]0;t\x07",
           "\x7f", "\x85", "\x9b", "\u2028", "\ufeff", "\ud7ff"]
YAML_PUNCT = list("[]{}:#&*!|>'\"%@`,-? ") + ["<<", "---", "...", ": ", " #", "\n- ", "!!python/object:os.system"]

short_text = st.lists(st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                st.sampled_from(CONTROL + YAML_PUNCT)), max_size=12).map("".join)
names = st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z"), short_text)
class BigInt:
    """An integer with thousands of digits, written as a plain YAML int (Python cannot str() it)."""

    def __init__(self, digits: int):
        self.digits = digits


class FuzzDumper(yaml.SafeDumper):
    pass


FuzzDumper.add_representer(BigInt, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", "7" * v.digits))
big_ints = st.integers(4000, 6000).map(BigInt)
long_text = st.integers(300, 20_000).map(lambda n: "x" * n)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints, st.floats(allow_nan=True, allow_infinity=True),
    short_text, long_text, st.dates(), st.datetimes(), st.binary(max_size=20),
    st.sampled_from(["3.10", "1.0", "python", "/etc/passwd", "$PATH", "DLENV_CONTENT_HASH", ".git", ""]),
)


def _self_containing(value):
    box = [value]
    box.append(box)
    return box


def _extend(children):
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(names, children, max_size=5),
        st.sets(st.integers(), max_size=3),
        # the same object several times: the dumper writes an anchor and aliases (nested: a laughs tree)
        st.tuples(st.lists(children, min_size=1, max_size=3), st.integers(2, 10)).map(lambda t: [t[0]] * t[1]),
        children.map(_self_containing),
    )


values = st.recursive(scalars, _extend, max_leaves=25)


def _dump(doc, **kwargs) -> str:
    return yaml.dump(doc, Dumper=FuzzDumper, allow_unicode=True, width=10_000, **kwargs)


def _dump_bytes(doc) -> bytes:
    return _dump(doc, sort_keys=False).encode("utf-8", "surrogatepass")


@st.composite
def damaged(draw, doc_strategy):
    """A YAML text of a document, sometimes damaged: bytes spliced in, cut short, nested deep."""
    data = _dump_bytes(draw(doc_strategy))
    kind = draw(st.sampled_from(["plain", "plain", "plain", "splice", "truncate", "deep", "prefix"]))
    if kind == "splice" and data:
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b"&a [*a]", b"*nope", b"\t", b"\r",
                                     b"\x1b[31m", b": : :", b"{", b"]", b"!!binary", b"!!python/name:os.system",
                                     b"9" * 5000, b"\xef\xbb\xbf"]))
        data = data[:at] + junk + data[at:]
    elif kind == "truncate" and data:
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "deep":
        depth = draw(st.integers(10, 1500))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b"{a: ", b"}"), (b"- ", b"")]))
        if opener == b"- ":
            nested = b"".join(b" " * i + b"-\n" for i in range(0, min(depth, 400) * 2, 2)) + b" " * depth + b"x\n"
            data = data + b"\ndeep:\n" + nested
        else:
            data = data + b"\ndeep: " + opener * depth + b"1" + closer * depth + b"\n"
    elif kind == "prefix":
        data = draw(st.sampled_from([b"%YAML 1.1\n---\n", b"--- !!set\n", b"---\n", b"\xef\xbb\xbf", b"&r\n",
                                     b"--- &x\n"])) + data
    return data


# --- documents of each kind --------------------------------------------------------------------------

STACK_FIELDS = ["schema", "name", "description", "extends", "base", "components", "python_packages",
                "apt_packages", "env", "checks", "testinfra", "run", "files"]

stack_docs = st.fixed_dictionaries(
    {"schema": st.one_of(st.just(1), values), "name": st.one_of(st.just("fuzz"), names)},
    optional={
        "extends": st.one_of(st.sampled_from(["python", "chainer", "./missing.yaml", "../x.yaml", "/etc/passwd"]),
                             names),
        "description": st.one_of(short_text, long_text, values),
        "components": st.dictionaries(st.one_of(st.sampled_from(["python", "numpy", "cuda"]), names),
                                      st.one_of(st.sampled_from(["3.11", ">=1", "1.26.*"]), scalars), max_size=4),
        "env": st.dictionaries(st.one_of(st.sampled_from(["PATH", "DLENV_CONTENT_HASH", "PIP_INDEX_URL", "A"]), names),
                               st.one_of(short_text, scalars), max_size=4),
        "python_packages": st.lists(st.one_of(st.sampled_from(["tqdm==4.66.5", "numpy"]), short_text), max_size=4),
        "apt_packages": st.lists(st.one_of(st.just("curl"), short_text), max_size=3),
        "files": st.lists(st.one_of(st.sampled_from(["src", ".git", "x.txt"]), short_text,
                                    st.fixed_dictionaries({"src": st.one_of(st.just("x.txt"), short_text),
                                                           "dest": st.one_of(st.just("/workspace/x"), short_text)})),
                          max_size=3),
        "run": st.lists(st.one_of(short_text, st.fixed_dictionaries({"command": short_text, "as_root": values})),
                        max_size=3),
        "checks": st.lists(st.dictionaries(st.one_of(st.sampled_from(["name", "command", "python"]), names),
                                           values, max_size=3), max_size=2),
        "testinfra": short_text,
        "base": values,
    },
)
any_docs = st.one_of(stack_docs, values, st.dictionaries(st.one_of(st.sampled_from(STACK_FIELDS), names), values,
                                                          max_size=6))

LOCK_PATHS = ["lock", "stack", "inputs", "inputs.components", "inputs.components.python", "inputs.apt.build",
              "inputs.python", "inputs_sha256", "platform", "platform.arch", "base", "base.packages",
              "base.packages.bash", "base.rootfs_sha256", "apt", "apt.build", "apt.runtime.python3", "sources",
              "sources.x", "python", "python.python_packages", "dlenv_version", "extra"]


_BASE_LOCK = project_lock()


@st.composite
def lock_docs(draw):
    doc = copy.deepcopy(_BASE_LOCK)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(LOCK_PATHS)).split(".")
        node = doc
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if draw(st.booleans()) and path[-1] in node and len(path) > 1:
            del node[path[-1]]
        else:
            node[path[-1]] = draw(values)
    return doc, draw(st.booleans())


SETTING_KEYS = ["registry", "debian_mirror", "ca_bundle", "shm_size", "engine", "base"]
config_docs = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(SETTING_KEYS), names), st.one_of(short_text, values), max_size=4),
    values)

env_docs = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(short_text, values),
                           "dependencies": st.lists(st.one_of(short_text, values,
                                                              st.fixed_dictionaries({"pip": st.one_of(
                                                                  st.lists(st.one_of(short_text, values), max_size=5),
                                                                  values)})), max_size=5)}),
    values)


# --- the property ---------------------------------------------------------------------------------

def check(result, what: str, data: bytes) -> None:
    shown = data[:300]
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{what}: uncaught {type(result.exception).__name__}: {result.exception!s:.200} for {shown!r}"
    assert "Traceback" not in result.output, f"{what}: traceback for {shown!r}"
    bad = RAW_CONTROL.search(result.output)
    assert bad is None, f"{what}: raw {bad.group()!r} in output {result.output[:300]!r} for {shown!r}"
    if result.exit_code != 0:
        assert result.exit_code == 1, f"{what}: exit {result.exit_code} for {shown!r}"
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dlenv: error: "), \
            f"{what}: not one error line: {result.stderr[:500]!r} for {shown!r}"
        assert result.stdout == "", f"{what}: stdout on error for {shown!r}"


@pytest.fixture
def invoke(cli):
    def run(*args, cwd: Path, env: dict | None = None):
        old = os.getcwd()
        os.chdir(cwd)
        try:
            return cli(*args, env={"XDG_CONFIG_HOME": str(cwd / "xdg-empty"), **(env or {})})
        finally:
            os.chdir(old)
    return run


@FUZZ
@given(data=damaged(any_docs))
def test_fuzz_stack_file(invoke, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(data)
        (Path(tmp) / "x.txt").write_text("x\n")
        check(invoke("render", path, cwd=Path(tmp)), "render STACK", data)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(doc=lock_docs(), command=st.sampled_from([["render"], ["show"], ["lock", "--check"]]),
       mangle=st.sampled_from([None, None, b"\x00", b"\xff", b"&a [*a]", b"9" * 5000, b"[" * 1500]))
def test_fuzz_lock_file(invoke, doc, command, mangle):
    lock, fix_digest = doc
    with tempfile.TemporaryDirectory() as tmp:
        stack = project(Path(tmp), WHOLE_BUILD)
        lock_file = stack.with_name("dlenv.lock")
        write_lock(lock_file, copy.deepcopy(lock), fix_digest=fix_digest, dumper=_dump)
        data = lock_file.read_bytes()
        if mangle is not None:
            data = data.replace(b"\nplatform:", b"\nplatform: " + mangle + b"\nplatform_:", 1)
            lock_file.write_bytes(data)
        check(invoke(*command, stack, cwd=Path(tmp)), f"{' '.join(command)} (lock)", data)


@FUZZ
@given(data=damaged(config_docs), user=st.booleans())
def test_fuzz_config_file(invoke, data, user):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        env = {}
        if user:
            (cwd / "xdg" / "dlenv").mkdir(parents=True)
            (cwd / "xdg" / "dlenv" / "config.yaml").write_bytes(data)
            env = {"XDG_CONFIG_HOME": str(cwd / "xdg")}
        else:
            (cwd / ".dlenv.yaml").write_bytes(data)
        check(invoke("config", cwd=cwd, env=env), "config", data)


@FUZZ
@given(data=damaged(env_docs))
def test_fuzz_environment_yml(invoke, data):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "environment.yml").write_bytes(data)
        result = invoke("init", "--from", "python", "-y", cwd=cwd)
        check(result, "init (environment.yml)", data)
        assert len(result.output) < 10_000, f"init printed {len(result.output)} characters for {data[:300]!r}"
        if result.exit_code != 0:
            assert not (cwd / "dlenv.yaml").exists(), "init failed after writing dlenv.yaml"
