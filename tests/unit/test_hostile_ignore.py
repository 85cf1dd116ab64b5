"""#24: the `.dlenvignore` semantics that the indexed matcher (literal text -> patterns, instead of
one regex of every pattern) must keep: `!`, a leading `/`, a trailing `/`, `**`, brackets, repeated
patterns, and agreement with the pattern-by-pattern matcher on random sets of many patterns, with
the chunked regexes cut small so that every path through them is taken. No timing here: the figures
are bench/ignore_matching.py's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from builder.spec import projectfiles
from test_hostile_extra import _reference_ignored


def _rules(tmp_path: Path, text: str) -> projectfiles.IgnoreRules:
    (tmp_path / ".dlenvignore").write_text(text)
    return projectfiles.compile_patterns(projectfiles.ignore_patterns(tmp_path))


@pytest.mark.parametrize("text,ignored,kept", [
    # `!` keeps what an earlier pattern ignores; the last pattern that matches wins
    ("*.log\n!keep.log\n", ["a.log", "sub/a.log"], ["keep.log", "sub/keep.log", "a.py"]),
    ("!keep.log\n*.log\n", ["a.log", "keep.log"], ["a.py"]),
    ("data\n!data/raw\n", ["data/x", "data"], ["data/raw", "data/raw/y"]),
    ("build/**\n!build/keep/**\nbuild/keep/tmp\n", ["build/x", "build/keep/tmp"], ["build/keep/a", "build"]),
    # a leading `/` is dropped: the pattern matches a path from the top or a name at any depth (as dlenv
    # always did). A path is tested as itself, its folders from the top and its own name, so `sub/data/x`
    # is not matched by `data`; the walk never gets there, since it skips the folder `sub/data` first.
    ("/data\n", ["data", "data/x", "sub/data"], ["database", "sub/x", "sub/data/x"]),
    ("/src/gen\n", ["src/gen", "src/gen/a.py"], ["gen/a.py", "x/src/gen"]),
    # a trailing `/` is dropped too: it also matches a file of that name
    ("cache/\n", ["cache", "cache/a", "x/cache"], ["cached", "x/cache.py", "x/cache/b"]),
    # `**` is fnmatch's `*`: it crosses `/`, but needs a `/` where the pattern has one
    ("**\n", ["a", "a/b"], []),
    ("**/*.pyc\n", ["a/b.pyc", "a/b/c.pyc"], ["b.pyc", "a/b.py"]),
    ("src/**/test_*\n", ["src/a/test_x.py", "src/a/b/test_y"], ["src/test_x.py", "test_x.py"]),
    ("*.tmp\n", ["a.tmp", "x/y/a.tmp", "dir.tmp/inside"], ["a.tmpl"]),
    # brackets, `?`, an unclosed `[` (a literal), a `]` on its own (a literal)
    ("d?/\n[ab]*.py\n", ["d1/x", "a1.py", "x/b.py"], ["dd1/x", "c.py"]),
    ("[!a]x\n", ["bx", "dir/cx"], ["ax", "x"]),
    ("weird[name\n", ["weird[name"], ["weirdn", "weird"]),
    ("a]b\n", ["a]b"], ["ab"]),
    ("[]a]x\n[!]]y\n", ["]x", "ax", "ay"], ["bx", "]y"]),      # a `]` first in brackets belongs to them
    # comments and blank lines are skipped; the same pattern twice counts where it last stands
    ("# *.py\n\n*.py\n!*.py\n*.py\n", ["a.py"], ["a.txt"]),
])
def test_ignore_semantics(tmp_path, text, ignored, kept):
    rules = _rules(tmp_path, text)
    patterns = projectfiles.ignore_patterns(tmp_path)
    for path in ignored + kept:
        assert rules.ignored(path) == (path in ignored) == _reference_ignored(path, patterns), (text, path)


def test_always_ignored_names_win_over_negation(tmp_path):
    rules = _rules(tmp_path, "!.git\n!__pycache__/x.pyc\n")
    assert rules.ignored(".git/config") and rules.ignored("src/__pycache__/x.pyc")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abd") for _ in range(rng.randint(0, 3)))


def _pattern(rng: random.Random) -> str:
    pieces = ["*", "**", "?", "[ab]", "[!a]", "[]a]", "[!]]", "[", "]", "/"]
    body = "".join(rng.choice(pieces + [_word(rng), _word(rng)]) for _ in range(rng.randint(1, 4)))
    return rng.choice(["", "", "!", "/", "!/"]) + body


@pytest.mark.parametrize("chunk", [1, 3, projectfiles.CHUNK])
def test_indexed_rules_agree_with_the_pattern_by_pattern_matcher(monkeypatch, chunk):
    """Many patterns at once (literals, literal text to index by, none), against paths at several
    depths, asked in random order (a candidate's verdict is kept between paths)."""
    monkeypatch.setattr(projectfiles, "CHUNK", chunk)
    rng = random.Random(24)
    paths = ["/".join("".join(rng.choice("abd[]") for _ in range(rng.randint(1, 4)))
                      for _ in range(rng.randint(1, 4))) for _ in range(60)]
    for _ in range(40):
        patterns = [_pattern(rng) for _ in range(rng.randint(1, 300))]
        rules = projectfiles.compile_patterns(patterns)
        for path in rng.sample(paths, len(paths)):
            assert rules.ignored(path) == _reference_ignored(path, patterns), (path, patterns)
