"""How long a big `.dlenvignore` costs: N patterns over a project folder of 200 files (#24).

    .venv/bin/python bench/ignore_matching.py [--sizes 1000,10000,40000] [--repeat 3] [--no-render]
                                              [--worst]

For each N, a project folder (10 folders x 20 files under `src/`, `files: [src]`) gets a
`.dlenvignore` of N patterns, a mix of what generated ignore files hold: literal paths, `name-*`,
`*.ext`, `dir/**` and `!` exceptions, none of which matches all files. Timed, best of --repeat:
  - rules: the ignore file read and compiled (`ignore_patterns` + `compile_patterns`);
  - match: all 200 paths and their folders asked (`IgnoreRules.ignored`), on fresh rules;
  - collect: what `dlenv render` does with the folder (`projectfiles.collect`: walk, match, read);
  - render: `dlenv render` of the project as a subprocess, interpreter start included (the issue's figure).
--worst adds N patterns without any literal text (`??[a-z]*`, ...): the one kind that still shares a
regex, for the record. No engine, no network; the folders live in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.spec import projectfiles  # noqa: E402
from builder.spec.stack import load_stack_file  # noqa: E402

FOLDERS, FILES = 10, 20


def mixed_patterns(n: int) -> list:
    kinds = (lambda i: f"src/d{i}/f{i}.py",          # literal; matches src/d0/f0.py ... src/d9/f9.py
             lambda i: f"generated-{i}-*.tmp",
             lambda i: f"*.ext{i}",
             lambda i: f"build/out{i}/**",
             lambda i: f"!src/d{i % FOLDERS}/keep-{i}-*")
    return [kinds[i % len(kinds)](i) for i in range(n)]


def worst_patterns(n: int) -> list:
    """No literal text at all: `?`, `*` and brackets only, each pattern different, none matching."""
    upper = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    return ["?" * (i % 8) + f"[{upper[i // 8 % 26]}{upper[i // 208 % 26]}]" + "*" * (1 + i // 5408) for i in range(n)]


def make_project(folder: Path, patterns: list) -> Path:
    src = folder / "src"
    for d in range(FOLDERS):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(FILES):
            (src / f"d{d}" / f"f{f}.py").write_text(f"x = {d * FILES + f}\n")
    (folder / ".dlenvignore").write_text("\n".join(patterns) + "\n")
    stack = folder / "dlenv.yaml"
    stack.write_text("schema: 1\nname: bench-ignore\nextends: python\nfiles: [src]\n")
    return stack


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        re.purge()      # `re` keeps compiled patterns: each run pays for its own
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(folder: Path, patterns: list, repeat: int, render: bool) -> dict:
    stack = make_project(folder, patterns)
    paths = [f"src/d{d}/f{f}.py" for d in range(FOLDERS) for f in range(FILES)]
    asked = sorted({p.rsplit("/", 1)[0] for p in paths} | {"src"}) + paths

    def match() -> float:
        rules = projectfiles.compile_patterns(patterns)     # fresh: nothing remembered from a previous run
        re.purge()
        start = time.perf_counter()
        for p in asked:
            rules.ignored(p)
        return time.perf_counter() - start

    copied = load_stack_file(stack).files
    rules = projectfiles.compile_patterns(patterns)
    figures = {
        "rules": best(lambda: projectfiles.compile_patterns(projectfiles.ignore_patterns(folder)), repeat),
        "match": min(match() for _ in range(repeat)),
        "collect": best(lambda: projectfiles.collect(copied), repeat),
        "ignored": sum(rules.ignored(p) for p in asked),
        "copied": sum(len(b.files) for b in projectfiles.collect(copied)),
    }
    if render:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DLENV_", "XDG_"))}
        env.update({"NO_COLOR": "1", "XDG_CONFIG_HOME": str(folder / "xdg"), "PYTHONPATH": str(ROOT)})
        exe = Path(sys.executable).with_name("dlenv")

        def run():
            subprocess.run([str(exe), "render", str(stack)], env=env, check=True, stdout=subprocess.DEVNULL)
        figures["render"] = best(run, repeat)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,40000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-render", action="store_true", help="skip the `dlenv render` subprocess")
    parser.add_argument("--worst", action="store_true", help="also patterns without literal text")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sets = [("mixed", mixed_patterns)] + ([("no literal text", worst_patterns)] if args.worst else [])
    print(f"{FOLDERS * FILES} files in {FOLDERS} folders; seconds, best of {args.repeat}; "
          f"python {sys.version.split()[0]}")
    print(f"{'patterns':>9} {'kind':<16} {'rules':>7} {'match':>7} {'collect':>8} {'render':>7}  ignored/asked copied")
    for kind, make in sets:
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="dlenv-bench-ignore-") as tmp:
                f = measure(Path(tmp), make(n), args.repeat, not args.no_render)
            render = f"{f['render']:7.3f}" if "render" in f else f"{'-':>7}"
            print(f"{n:>9} {kind:<16} {f['rules']:7.3f} {f['match']:7.3f} {f['collect']:8.3f} {render}  "
                  f"{f['ignored']}/{FOLDERS * FILES + FOLDERS + 1} {f['copied']}", flush=True)


if __name__ == "__main__":
    main()
