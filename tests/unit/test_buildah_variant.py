"""The buildah engine without an engine: the Dockerfile variant (exec-form RUNs of the stage's SHELL,
the CA bundle as a secret, the two determinism fixes), the content hash independent of the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder import paths
from builder.errors import RenderError
from builder.plan import buildah_variant
from builder.plan.buildkit_variant import _instructions
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

STACKS = catalog_stack_names(paths.stacks_dir())
PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "projects" / "chainermn-project" / "dlenv.yaml"


def runs(text: str) -> list[tuple[str, str]]:
    out, stage = [], None
    for block in _instructions(text):
        m = re.match(r"^FROM \S+ AS (\S+)", block[0])
        if m:
            stage = m.group(1)
        if block[0].startswith("RUN "):
            out.append((stage, "\n".join(block)))
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_every_catalog_stack_rewrites_to_exec_form(stack):
    p = plan(stack)
    before = p.content_hash
    text = buildah_variant.variant(p.context.dockerfile)
    assert "\nSHELL " not in text and "COPY dlenv-build/ca.crt" not in text
    for stage, ins in runs(text):
        body = re.sub(r"^RUN (--mount=\S+ )*", "", ins)
        assert body.startswith("["), ins[:120]
        argv = json.loads(body)
        assert argv[:4] == ["/bin/bash", "-o", "pipefail", "-c"] or argv[0] != "/bin/bash"
        assert ("type=secret,id=dlenv-ca" in ins) == (stage == "build" and "pip install" in ins)
        # the Debian sources (the mirror's URL) only as a mount of the apt steps, so in no layer
        assert ("--mount=type=bind,source=apt-sources/debian.sources,target=/etc/apt/sources.list.d/dlenv-build"
                ".sources " in ins) == ("apt-get " in ins)
    assert plan(stack).content_hash == before


def test_continuations_flags_and_exec_form():
    df = ('FROM b AS build\nSHELL ["/bin/bash", "-c"]\nRUN --mount=type=cache,target=/x echo a \\\n && echo "b c"\n'
          'RUN ["echo", "x"]\nCOPY dlenv-build/ca.crt /etc/dlenv-build/ca.crt\n'
          'RUN [ -s /etc/dlenv-build/ca.crt ] || cp /etc/ssl/certs/ca-certificates.crt /etc/dlenv-build/ca.crt\n'
          'RUN pip install x\n')
    out = buildah_variant.variant(df)
    assert 'RUN --mount=type=cache,target=/x ["/bin/bash", "-c", "echo a  && echo \\"b c\\""]' in out
    assert 'RUN ["echo", "x"]' in out
    assert 'RUN --mount=type=secret,id=dlenv-ca,target=/etc/dlenv-build/ca.crt ["/bin/bash", "-c", "pip install x"]' in out
    no_secret = buildah_variant.variant(df, ca_secret=False)
    assert "type=secret" not in no_secret


@pytest.mark.parametrize("df", [
    'FROM b AS build\nSHELL not-json\nRUN true\n',
    'FROM b AS build\nRUN true\n',                                              # no SHELL at all
    'FROM b AS build\nSHELL ["/bin/sh", "-c"]\nRUN pip install x\n',               # CA lines missing
])
def test_unexpected_shape_is_one_line_render_error(df):
    with pytest.raises(RenderError) as err:
        buildah_variant.variant(df)
    assert "\n" not in err.value.one_line() and "buildah_variant.py" in err.value.one_line()


def test_apt_mount_also_before_a_stage_shell():
    out = buildah_variant.variant('FROM b AS runtime\nRUN apt-get update\nSHELL ["/bin/sh", "-c"]\nRUN echo apt\n')
    assert "RUN --mount=type=bind,source=apt-sources/debian.sources,target=/etc/apt/sources.list.d/dlenv-build.sources " \
           "apt-get update" in out
    assert 'RUN ["/bin/sh", "-c", "echo apt"]' in out


@pytest.mark.parametrize("stack", STACKS)
def test_runtime_stage_takes_no_machine_dependent_build_arg(stack):
    """buildah writes a build arg's value into the history of each later RUN of its stage, so into the
    image id: the pip index settings may only reach the build stage (its history is not the image's;
    measured: two values, one final id). A proxy's value is never recorded, but its name is, in each ARG
    step's history: buildah is given dlenv's own proxy arguments only (test_buildah_engine_unit, #24)."""
    text = buildah_variant.variant(plan(stack).context.dockerfile)
    runtime = text[text.index(" AS runtime"):]
    assert re.findall(r"^ARG (\w+)", runtime, flags=re.M) == ["DLENV_CONTENT_HASH"]


def _stage_texts(text: str) -> dict:
    return {m.group(1): m.group(0) for m in re.finditer(r"^FROM \S+ AS (\S+)\n.*?(?=^FROM |\Z)", text, re.M | re.S)}


def test_no_two_stages_begin_alike():
    """Both stages of a project on its parent's image began `FROM parent` and `USER 0:0`: built at once,
    both committed that one intermediate image, and the temporary name buildah gives an image while it
    commits it reached the next step's history now and then (issue #24: another id, no other path). The
    build stage begins with a label instead; the runtime stage (the image) is not touched."""
    canonical = plan(str(PROJECT)).context.dockerfile
    text = buildah_variant.variant(canonical)
    build, runtime = _stage_texts(text)["build"], _stage_texts(text)["runtime"]
    assert build.splitlines()[1] == 'LABEL org.dlenv.buildah-stage="build"' and build.splitlines()[2] == "USER 0:0"
    assert runtime.splitlines()[1] == "USER 0:0" and "buildah-stage" not in runtime
    # Two later stages that would begin alike are both told apart; the last stage never changes.
    lines = buildah_variant._distinct_stages(["FROM p AS a", "# a note", "USER 0:0", "FROM p AS b", "USER 0:0",
                                              "FROM q AS d", "USER 0:0", "FROM p AS c", "USER 0:0"])
    assert [line for line in lines if line.startswith("LABEL")] == \
        ['LABEL org.dlenv.buildah-stage="a"', 'LABEL org.dlenv.buildah-stage="b"']
    assert lines[:2] == ["FROM p AS a", 'LABEL org.dlenv.buildah-stage="a"'] and lines[-2:] == ["FROM p AS c", "USER 0:0"]


@pytest.mark.parametrize("stack", STACKS)
def test_whole_stacks_stages_already_begin_apart(stack):
    """A whole stack's stages begin with different steps on the base: nothing is added (its build stage's
    layer cache stays)."""
    assert "buildah-stage" not in buildah_variant.variant(plan(stack).context.dockerfile)
