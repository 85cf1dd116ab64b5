"""The cluster-network extras of the MPI stack (UCX, rdma-core, PMIx): chainermn has them, a stack
that lists Open MPI without them renders the plain TCP/shared-memory build, and what only the
build needs (UCX's link-time driver stubs, its source tree, the -dev packages) stays in the build stage."""

from __future__ import annotations

import re

import pytest

from builder.plan.plan import plan

from test_render import logical_lines, stages

PLAIN_MPI = """\
schema: 1
name: plain-mpi
extends: chainer-gpu
components:
  openmpi: "4.1.4"
  mpi4py: "3.1.6"
  openssh: "9.2"
"""


def _run_line(stage_text: str, marker: str) -> str:
    return next(ln for ln in logical_lines(stage_text) if marker in ln)


@pytest.fixture(scope="module")
def chainermn():
    return plan("chainermn")


@pytest.fixture
def plain(tmp_path):
    def make(extra: str = "") -> object:
        path = tmp_path / "plain-mpi.yaml"
        path.write_text(PLAIN_MPI + extra)
        return plan(str(path))
    return make


def test_chainermn_builds_ucx_before_open_mpi_and_configures_both_extras(chainermn):
    names = [n for n in chainermn.resolved.versions()]
    assert names.index("ucx") < names.index("openmpi")
    assert {"ucx", "rdma-core", "pmix"} <= set(names)
    build = stages(chainermn.context.dockerfile)["build"]
    configure = _run_line(build, "openmpi-configure.log")
    assert "--with-ucx=/opt/ucx" in configure
    assert '--with-pmix="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/pmix2"' in configure
    for flag in ("--with-libevent=external", "--with-hwloc=external", "--with-slurm"):
        assert flag in configure
    # the build step itself fails when ompi_info lacks the components
    assert "^mca:pml:ucx:" in configure and "^mca:pmix:ext3x:" in configure


def test_ucx_links_against_driver_stubs_that_never_reach_the_runtime_stage(chainermn):
    parts = stages(chainermn.context.dockerfile)
    ucx = _run_line(parts["build"], "ucx-configure.log")
    assert "--with-cuda=/usr/src/ucx/cuda" in ucx
    assert '-Wl,-soname,"lib${lib}.so.1"' in ucx          # the driver's sonames, resolved on the host
    assert ucx.rstrip().endswith("rm -rf /usr/src/ucx /tmp/ucx-*.log")   # same step: no layer keeps them
    assert "/usr/src/ucx" not in parts["runtime"] and "stubs" not in parts["runtime"]
    assert "COPY --from=build /opt/ucx /opt/ucx" in parts["runtime"]


def test_runtime_gets_verbs_pmix_and_no_dev_packages(chainermn):
    # What each stage asks for (the locked Dockerfile installs the lock's closure from a file).
    runtime = list(chainermn.resolved.apt_runtime)
    for pkg in ("libibverbs1", "librdmacm1", "ibverbs-providers", "libpmix2", "libnuma1",
                "libevent-core-2.1-7", "libevent-pthreads-2.1-7", "libhwloc15"):
        assert pkg in runtime
    assert not [p for p in runtime if p.endswith("-dev")]
    build = list(chainermn.resolved.apt_build)
    for pkg in ("libibverbs-dev", "librdmacm-dev", "libpmix-dev", "libevent-dev", "libhwloc-dev", "libnuma-dev",
                "autoconf", "automake", "libtool"):
        assert pkg in build


def test_a_stack_without_the_extras_renders_the_plain_open_mpi(plain):
    p = plain()
    assert not {"ucx", "rdma-core", "pmix"} & set(p.resolved.versions())
    dockerfile = p.context.dockerfile
    configure = _run_line(stages(dockerfile)["build"], "openmpi-configure.log")
    assert not re.search(r"--with-(ucx|pmix|slurm|libevent|hwloc)", configure)
    assert "/opt/ucx" not in dockerfile and "libpmix" not in dockerfile and "libibverbs" not in dockerfile
    assert "# Cluster extras" not in dockerfile


def test_ucx_alone_adds_only_the_ucx_pml(plain):
    p = plain('  ucx: "1.13.1"\n')
    # ucx brings rdma-core (its verbs transports need it) but not PMIx
    assert "rdma-core" in p.resolved.versions() and "pmix" not in p.resolved.versions()
    configure = _run_line(stages(p.context.dockerfile)["build"], "openmpi-configure.log")
    assert "--with-ucx=/opt/ucx" in configure and "--with-pmix" not in configure


def test_pmix_alone_adds_only_pmix_and_slurm(plain):
    p = plain('  pmix: "4.2.2"\n')
    configure = _run_line(stages(p.context.dockerfile)["build"], "openmpi-configure.log")
    assert "--with-pmix=" in configure and "--with-slurm" in configure and "--with-ucx" not in configure
