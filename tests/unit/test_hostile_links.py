"""#24: every symlink shape a shared machine (or a git checkout) puts in a project folder, and the
ignore rules they could bypass. Each odd link is refused in one line `dlenv: error: ...` that names
the stack file and the link, exit status 1, no traceback; a link to a file (or to a link to a file)
inside the folder is copied as that file's bytes. The links are made at test time in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.spec import projectfiles
from builder.spec.stack import load_stack_file
from test_hostile import dlenv, files_project, one_line_error, project  # noqa: F401 - dlenv is a fixture

LOOP, DANGLING, OUT, LEAVES, EXCLUDED = ("is a symlink loop", "is a dangling symlink",
                                         "is a symlink out of the stack's folder", "leaves the stack's folder",
                                         "which is excluded by the ignore file")


# --- links inside a copied folder (`files: [src]`) -----------------------------------------------------
# Each builder gets the project folder and returns (name the message must carry, words it must carry).

def _self_loop(root: Path):
    (root / "src" / "me").symlink_to("me")
    return "src/me", LOOP


def _two_loop(root: Path):
    (root / "src" / "a").symlink_to("b")
    (root / "src" / "b").symlink_to("a")
    return "src/a", LOOP


def _three_loop(root: Path):
    for name, target in (("x", "y"), ("y", "z"), ("z", "x")):
        (root / "src" / name).symlink_to(target)
    return "src/x", LOOP


def _loop_through_a_folder(root: Path):
    (root / "src" / "here").symlink_to("../src/here")      # the same link, reached through the parent
    return "src/here", LOOP


def _chain_into_a_loop(root: Path):
    (root / "src" / "entry").symlink_to("ring1")
    (root / "src" / "ring1").symlink_to("ring2")
    (root / "src" / "ring2").symlink_to("ring1")
    return "src/entry", LOOP


def _growing_loop(root: Path):
    (root / "src" / "grow").symlink_to("grow/more")        # never the same path twice: ends at 40 links
    return "src/grow", LOOP


def _chain_of_41(root: Path):
    for i in range(41):
        (root / "src" / f"l{i:02}").symlink_to(f"l{i + 1:02}")
    (root / "src" / "l41").write_text("end\n")
    return "src/l00", "more than 40 symlinks"


def _dangling(root: Path):
    (root / "src" / "gone").symlink_to("no-such-file")
    return "src/gone", DANGLING


def _dangling_at_the_end_of_a_chain(root: Path):
    (root / "src" / "first").symlink_to("second")
    (root / "src" / "second").symlink_to("../nothing/here")
    return "src/first", DANGLING


def _dangling_through_a_file(root: Path):
    (root / "src" / "inside").symlink_to("train.py/x")     # a path below a regular file
    return "src/inside", DANGLING


def _out_absolute(root: Path):
    (root / "src" / "passwd").symlink_to("/etc/passwd")
    return "src/passwd", OUT


def _out_relative(root: Path):
    (root.parent / "secret.txt").write_text("secret\n")
    (root / "src" / "up").symlink_to("../../secret.txt")
    return "src/up", OUT


def _out_through_an_inside_link(root: Path):
    (root / "src" / "a-near").symlink_to("z-far")           # the folder is walked in name order
    (root / "src" / "z-far").symlink_to("/etc/hostname")
    return "src/a-near", OUT


def _out_through_a_linked_folder(root: Path):
    (root / "etc").symlink_to("/etc")
    (root / "src" / "host").symlink_to("../etc/hostname")
    return "src/host", OUT


def _out_to_a_folder_above(root: Path):
    (root / "src" / "top").symlink_to("../..")
    return "src/top", OUT


def _out_to_a_folder_outside(root: Path):
    (root / "src" / "sub").mkdir()
    (root / "src" / "sub" / "etc").symlink_to("/etc")
    return "src/sub/etc", OUT


def _into_an_ignored_file(root: Path):
    (root / "secret").mkdir()
    (root / "secret" / "id_rsa").write_text("key\n")
    (root / ".dlenvignore").write_text("secret/\n")
    (root / "src" / "key").symlink_to("../secret/id_rsa")
    return "src/key", EXCLUDED


def _into_an_ignored_folder(root: Path):
    (root / "secret").mkdir()
    (root / "secret" / "id_rsa").write_text("key\n")
    (root / ".dlenvignore").write_text("/secret\n")
    (root / "src" / "keys").symlink_to("../secret")
    return "src/keys", EXCLUDED


def _through_an_ignored_link(root: Path):
    (root / "hidden.lnk").symlink_to("src/train.py")         # the bytes are fine, the way there is ignored
    (root / ".dlenvignore").write_text("*.lnk\n")
    (root / "src" / "alias").symlink_to("../hidden.lnk")
    return "src/alias", EXCLUDED


def _into_git(root: Path):
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]\n")
    (root / "src" / "config").symlink_to("../.git/config")
    return "src/config", EXCLUDED


def _into_the_ignore_file(root: Path):
    (root / ".dlenvignore").write_text("*.tmp\n")
    (root / "src" / "rules").symlink_to("../.dlenvignore")
    return "src/rules", EXCLUDED


def _folder_loop_to_its_parent(root: Path):
    (root / "src" / "sub").mkdir()
    (root / "src" / "sub" / "up").symlink_to("..")
    return "src/sub/up", LOOP


def _folder_loop_to_itself(root: Path):
    (root / "src" / "again").symlink_to(".")
    return "src/again", LOOP


def _folder_loop_to_the_stack_folder(root: Path):
    (root / "src" / "root").symlink_to("..")
    return "src/root", LOOP


def _folder_loop_of_two_links(root: Path):
    (root / "src" / "d1").symlink_to("d2")
    (root / "src" / "d2").symlink_to("d1")
    return "src/d1", LOOP


def _folder_link_inside(root: Path):
    (root / "other").mkdir()
    (root / "other" / "x.py").write_text("x = 1\n")
    (root / "src" / "other").symlink_to("../other")
    return "src/other", "is a symlink to a folder"


ODD_LINKS = {f.__name__.lstrip("_"): f for f in (
    _self_loop, _two_loop, _three_loop, _loop_through_a_folder, _chain_into_a_loop, _growing_loop, _chain_of_41,
    _dangling, _dangling_at_the_end_of_a_chain, _dangling_through_a_file,
    _out_absolute, _out_relative, _out_through_an_inside_link, _out_through_a_linked_folder, _out_to_a_folder_above,
    _out_to_a_folder_outside,
    _into_an_ignored_file, _into_an_ignored_folder, _through_an_ignored_link, _into_git, _into_the_ignore_file,
    _folder_loop_to_its_parent, _folder_loop_to_itself, _folder_loop_to_the_stack_folder, _folder_loop_of_two_links,
    _folder_link_inside)}


@pytest.mark.parametrize("case", sorted(ODD_LINKS))
def test_odd_link_in_a_copied_folder_is_refused_in_one_line(dlenv, tmp_path, case):
    stack = files_project(tmp_path)
    name, words = ODD_LINKS[case](stack.parent)
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", name)
    assert words in line, line


# --- a `files:` entry that is itself a link ---------------------------------------------------------------

def _links(root: Path, *pairs: tuple) -> None:
    for name, target in pairs:
        (root / name).symlink_to(target)


def _entry_into_git(root: Path) -> None:
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote]\n")
    _links(root, ("entry", ".git/config"))


def _entry_into_ignored(root: Path) -> None:
    (root / ".dlenvignore").write_text("*.pem\n")
    (root / "k.pem").write_text("key\n")
    _links(root, ("entry", "k.pem"))


def _entry_into_ignored_folder(root: Path) -> None:
    (root / ".dlenvignore").write_text("data/\n")
    (root / "data").mkdir()
    (root / "data" / "x").write_text("x\n")
    _links(root, ("entry", "data"))


def _entry_ignored_itself(root: Path) -> None:
    (root / ".dlenvignore").write_text("entry\n")
    (root / "ok.txt").write_text("ok\n")
    _links(root, ("entry", "ok.txt"))


ODD_ENTRIES = {
    "self_loop": (lambda root: _links(root, ("entry", "entry")), LOOP),
    "two_loop": (lambda root: _links(root, ("entry", "other"), ("other", "entry")), LOOP),
    "three_loop": (lambda root: _links(root, ("entry", "b"), ("b", "c"), ("c", "entry")), LOOP),
    "dangling": (lambda root: _links(root, ("entry", "missing.txt")), DANGLING),
    "out_absolute": (lambda root: _links(root, ("entry", "/etc/passwd")), LEAVES),
    "out_relative": (lambda root: _links(root, ("entry", "../../x")), LEAVES),
    "out_folder": (lambda root: _links(root, ("entry", "/etc")), LEAVES),
    "into_git": (_entry_into_git, EXCLUDED),
    "into_ignored": (_entry_into_ignored, EXCLUDED),
    "into_ignored_folder": (_entry_into_ignored_folder, EXCLUDED),
    "ignored_itself": (_entry_ignored_itself, "is excluded by the ignore file"),
}


@pytest.mark.parametrize("case", sorted(ODD_ENTRIES))
def test_odd_link_named_in_files_is_refused_in_one_line(dlenv, tmp_path, case):
    """`files: [entry]` where `entry` is a link: the report of #24 (a two-link loop) was a traceback."""
    stack = project(tmp_path, "files: [entry]\n")
    build, words = ODD_ENTRIES[case]
    build(stack.parent)
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "entry")
    assert words in line, line


def test_entry_through_a_linked_folder_out_is_refused(dlenv, tmp_path):
    stack = project(tmp_path, "files: [etc/hostname]\n")
    (stack.parent / "etc").symlink_to("/etc")
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "etc/hostname")
    assert LEAVES in line and "'etc' -> '/etc'" in line, line


def test_check_script_that_is_a_loop_is_refused(dlenv, tmp_path):
    stack = project(tmp_path, "checks:\n  - name: x\n    script: check.py\n")
    (stack.parent / "check.py").symlink_to("check.py")
    one_line_error(dlenv("render", stack)[0], "dlenv.yaml", "check.py", LOOP)


def test_a_link_named_in_a_message_is_escaped(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / "src" / "\x1b[31mring").symlink_to("\x1b[31mring")
    line = one_line_error(dlenv("render", stack)[0], "dlenv.yaml", LOOP)
    assert "\\x1b[31mring" in line


# --- links that are copied: the bytes of the file at the end ---------------------------------------------

def _copied(stack: Path) -> dict:
    """What `files: [src]` puts into the build context: name inside the entry -> bytes."""
    [block] = projectfiles.collect(load_stack_file(stack).files)
    return {name.split("/", 2)[2]: data for name, (data, _) in block.files.items()}


def test_link_to_a_link_inside_is_copied_as_the_final_file(dlenv, tmp_path):
    """Kept from before #24: one link was followed and the file's bytes copied; a chain is followed
    the same way, since each hop is checked and the bytes come from a file inside the folder."""
    stack = files_project(tmp_path)
    src = stack.parent / "src"
    (src / "v2.0.py").write_text("version = 2\n")
    (src / "v2.py").symlink_to("v2.0.py")
    (src / "latest.py").symlink_to("v2.py")
    (src / "sub").mkdir()
    (src / "sub" / "again.py").symlink_to("../latest.py")
    (src / "alias.py").symlink_to(src / "train.py")          # absolute, but inside the folder
    assert dlenv("render", stack)[0].exit_code == 0
    files = _copied(stack)
    assert files["latest.py"] == files["v2.py"] == files["sub/again.py"] == b"version = 2\n"
    assert files["alias.py"] == b"print('hi')\n"


def test_forty_links_are_still_followed(dlenv, tmp_path):
    stack = files_project(tmp_path)
    src = stack.parent / "src"
    for i in range(40):
        (src / f"l{i:02}").symlink_to(f"l{i + 1:02}")
    (src / "l40").write_text("end\n")
    assert dlenv("render", stack)[0].exit_code == 0
    assert _copied(stack)["l00"] == b"end\n"


def test_a_loop_in_an_ignored_folder_is_never_looked_at(dlenv, tmp_path):
    stack = files_project(tmp_path)
    (stack.parent / "src" / "cache").mkdir()
    (stack.parent / "src" / "cache" / "a").symlink_to("b")
    (stack.parent / "src" / "cache" / "b").symlink_to("a")
    (stack.parent / ".dlenvignore").write_text("cache/\n")
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output


def test_entry_that_links_to_a_folder_inside_is_copied_as_that_folder(dlenv, tmp_path):
    stack = project(tmp_path, "files: [code]\n")
    (stack.parent / "src").mkdir()
    (stack.parent / "src" / "train.py").write_text("print('hi')\n")
    (stack.parent / "code").symlink_to("src")
    result, _ = dlenv("render", stack)
    assert result.exit_code == 0, result.output
    assert "/workspace/code" in result.stdout
