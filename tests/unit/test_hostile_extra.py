"""#18 follow-ups where the corpus in test_hostile.py is thin: the ignore-rule compiler against the
old pattern-by-pattern semantics, PATH forms, symlinked folders, pattern caps, the escaping helpers
and the promotion guard on the candidate's content-hash label."""

from __future__ import annotations

import fnmatch
import random
from types import SimpleNamespace

import pytest

from builder.errors import BuildError, SpecError, one_line, printable, shown
from builder.pipeline import build as build_mod
from builder.spec import projectfiles
from test_hostile import dlenv, files_project, one_line_error, project  # noqa: F401 - dlenv is a fixture


def _reference_ignored(relative: str, patterns: list) -> bool:
    """The pre-#18 matcher: every pattern against every prefix, the last match wins."""
    parts = relative.split("/")
    if any(p in projectfiles.ALWAYS_IGNORED for p in parts):
        return True
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = (pattern[1:] if negate else pattern).lstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)) \
                or fnmatch.fnmatchcase(parts[-1], pat):
            ignored = not negate
    return ignored


def test_compiled_ignore_rules_match_the_old_semantics():
    rng = random.Random(18)
    atoms = ["src", "data", "a.py", "b.tmp", "*.tmp", "src/*", "!src/keep.tmp", "d?", "[ab]*", "!a.py", "/data",
             "x/y", "!*.py", "**", "keep.tmp", "!data"]
    paths = ["src/a.py", "src/keep.tmp", "src/b.tmp", "data/x/y", "d1/a.py", "a.py", "b.tmp", "x/y/z.py",
             "src/.git/config", "deep/er/keep.tmp"]
    for _ in range(300):
        patterns = rng.sample(atoms, rng.randint(0, 8))
        rules = projectfiles.compile_patterns(patterns)
        for path in paths:
            assert rules.ignored(path) == _reference_ignored(path, patterns), (patterns, path)


@pytest.mark.parametrize("value,first,last", [("$PATH:/opt/x", "/opt/leaf/bin", "/opt/x"),
                                              ("/opt/x:${PATH}", "/opt/x", "/bin")])
def test_env_path_append_and_braces(dlenv, tmp_path, value, first, last):
    stack = project(tmp_path, f'python_packages: ["tqdm==4.66.5"]\nenv:\n  PATH: "{value}"\n')
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("ENV PATH="))
    path = line.split('"')[1]
    assert path.startswith(first) and path.endswith(last) and "$" not in path


@pytest.mark.parametrize("value", ["/opt/x", "$PATH:$PATH", "$PATHX:/opt", "$HOME/bin:$PATH"])
def test_env_path_without_one_reference_is_refused_with_a_hint(dlenv, tmp_path, value):
    stack = project(tmp_path, f'env:\n  PATH: "{value}"\n')
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "env.PATH")
    assert "$PATH" in line


def test_symlink_to_a_folder_inside_is_refused_by_name(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / "src" / "again").symlink_to(stack.parent / "src")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "src/again")


def test_too_many_ignore_patterns_refused(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / ".dlenvignore").write_text("".join(f"p{i}\n" for i in range(projectfiles.MAX_PATTERNS + 1)))
    one_line_error(dlenv("render", stack)[0], ".dlenvignore")


def test_folder_whose_every_file_is_ignored_is_not_silently_dropped(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / ".dlenvignore").write_text("*.py\n")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "src")


def test_named_file_excluded_by_the_ignore_file_is_refused(dlenv, tmp_path):
    stack = project(tmp_path, "files: [secret.txt]\n")
    (stack.parent / "secret.txt").write_text("x\n")
    (stack.parent / ".dlenvignore").write_text("secret.txt\n")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "secret.txt")


def test_escaping_helpers():
    assert printable("a\x1b[31mb\nc\x9b\u202e") == "a\\x1b[31mb\\nc\\x9b\\u202e"
    assert printable("naïve ✓") == "naïve ✓"
    assert shown("x" * 500, 20) == "'" + "x" * 17 + "...'"
    assert one_line("two\n  lines\r\x1b") == "two lines\\r\\x1b"
    assert len(one_line("y" * 10_000)) <= 1800
    err = SpecError("/tmp/\x1b]0;t\x07.yaml", "bad", field="env.\x1b")
    assert "\x1b" not in err.one_line() and "\\x1b" in err.one_line()


@pytest.mark.parametrize("label,ok", [("f" * 64, True), ("0" * 64, False), (None, False)])
def test_promotion_trusts_the_computed_hash_not_the_label(monkeypatch, label, ok):
    p = SimpleNamespace(content_hash="f" * 64, candidate_tag="dlenv/x:ffff-candidate",
                        resolved=SimpleNamespace(merged=SimpleNamespace(path="dlenv.yaml")))
    tagged = []
    monkeypatch.setattr(build_mod.engine, "image_attrs",
                        lambda client, ref: {"Config": {"Labels": {} if label is None else
                                                        {"org.dlenv.content-hash": label}}})
    monkeypatch.setattr(build_mod.engine, "tag", lambda client, image, ref: tagged.append(ref))
    monkeypatch.setattr(build_mod.engine, "untag", lambda client, ref: None)
    p.hash_tag, p.latest_tag = "dlenv/x:ffff", "dlenv/x:latest"
    if ok:
        build_mod._promote(None, p, "sha256:1")
        assert tagged == ["dlenv/x:ffff", "dlenv/x:latest"]
    else:
        with pytest.raises(BuildError, match="not promoted"):
            build_mod._promote(None, p, "sha256:1")
        assert tagged == []
