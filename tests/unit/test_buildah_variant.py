"""The buildah engine without an engine: the Dockerfile variant (exec-form RUNs of the stage's SHELL,
the CA bundle as a secret, the two determinism fixes), the content hash independent of the engine."""

from __future__ import annotations

import json
import re

import pytest

from builder import paths
from builder.errors import RenderError
from builder.plan import buildah_variant
from builder.plan.buildkit_variant import _instructions
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

STACKS = catalog_stack_names(paths.stacks_dir())


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
    measured: two values, one final id), and proxies are never recorded."""
    text = buildah_variant.variant(plan(stack).context.dockerfile)
    runtime = text[text.index(" AS runtime"):]
    assert re.findall(r"^ARG (\w+)", runtime, flags=re.M) == ["DLENV_CONTENT_HASH"]
