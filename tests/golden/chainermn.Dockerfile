# Rendered by dlenv 0.1.0 for stack "chainermn" (python -> chainer -> chainer-gpu -> chainermn). Do not edit: change the stack file.
# Two stages: "build" holds compilers, headers, sources and the CA bundle; "runtime" receives only
# install prefixes and the venv, one COPY per layer group, heaviest and most stable first.
# Locked by chainermn.lock (pins 40b49dbb2dddaf2f).

FROM dlenv/base:bookworm-minbase-324ac74f0d4e AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# SOURCE_DATE_EPOCH (the base's): bytecode that pip compiles is hash-based, not install-time stamped.
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 SOURCE_DATE_EPOCH=1735689600
# Every package this stage installs or upgrades, at the version the lock names.
COPY dlenv-build/apt-build.txt /etc/dlenv-build/apt-build.txt
RUN apt-get update \
 && xargs --no-run-if-empty --arg-file=/etc/dlenv-build/apt-build.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/*
# The CA bundle lets pip reach the package index; it exists in this stage only.
COPY dlenv-build/ca.crt /etc/dlenv-build/ca.crt
RUN [ -s /etc/dlenv-build/ca.crt ] || cp /etc/ssl/certs/ca-certificates.crt /etc/dlenv-build/ca.crt
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_CERT=/etc/dlenv-build/ca.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# --- python 3.11 [system]
RUN python3 -m venv /opt/venv

# --- cuda-headers 12.6 [compile]
COPY dlenv-build/pylock/cuda-headers.txt /etc/dlenv-build/pylock/cuda-headers.txt
RUN /opt/venv/bin/pip install --no-deps --no-compile --only-binary=:all: --target /opt/cuda-headers --require-hashes -r /etc/dlenv-build/pylock/cuda-headers.txt && /opt/venv/bin/python -m compileall -q /opt/cuda-headers \
 && test -f /opt/cuda-headers/nvidia/cuda_runtime/include/cuda.h

# --- ucx 1.13.1 [compile]
COPY dlenv-build/pylock/ucx.txt /etc/dlenv-build/pylock/ucx.txt
# UCX from Debian's source package: the upstream tarball (from dlenv's package repository, which serves it only after checking it against the lock's sha256; checked here again),
# Debian's patches not applied. The tarball is a git snapshot without ./configure (autogen.sh needs
# autotools), and Debian renamed upstream's debian/ to debian.upstream, which configure.ac still names.
# CUDA: UCX's configure (config/m4/cuda.m4) needs cuda.h, cuda_runtime.h (which includes the
# crt/ headers of the nvcc wheel) and nvml.h, and links -lcuda -lcudart -lnvidia-ml. The wheels give
# the headers and libcudart; libcuda.so.1 and libnvidia-ml.so.1 belong to the GPU driver, which the
# NVIDIA container runtime brings from the host at run time. The link therefore uses stubs made
# here with the driver's sonames (what the CUDA toolkit's lib64/stubs are for): every cu*/nvml*
# name in the headers becomes a function that fails. Stubs, wheels and the tree under /usr/src/ucx
# stay in this step; the image's libuct_cuda.so needs the real libcuda.so.1 and libnvidia-ml.so.1.
RUN mkdir -p /usr/src/ucx/cuda/include /usr/src/ucx/cuda/lib/stubs && cd /usr/src/ucx \
 && /usr/lib/apt/apt-helper download-file http://dlenv.packages/sources/ucx_1.13.1.orig.tar.xz ucx_1.13.1.orig.tar.xz \
 && echo '1a88e09ca1b406c046a469c2ae271d2c330050b5664c0bcd9890e26c6ef09f3c  ucx_1.13.1.orig.tar.xz' | sha256sum --check --strict - \
 && /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /usr/src/ucx/wheels \
        --require-hashes -r /etc/dlenv-build/pylock/ucx.txt \
 && ln -s /opt/cuda-headers/nvidia/cuda_runtime/include/* /usr/src/ucx/wheels/nvidia/cuda_nvcc/include/crt \
        /usr/src/ucx/wheels/nvidia/nvml_dev/include/nvml.h /usr/src/ucx/cuda/include/ \
 && ln -s /opt/cuda-headers/nvidia/cuda_runtime/lib/libcudart.so.12 /usr/src/ucx/cuda/lib/libcudart.so \
 && for stub in cuda:cuda.h nvidia-ml:nvml.h; do \
      lib="${stub%%:*}"; \
      grep -ohE '\b(cu|nvml)[A-Z][A-Za-z0-9_]*' "/usr/src/ucx/cuda/include/${stub#*:}" | sort -u \
        | sed 's/.*/int &(void) { return 999; }/' > "/usr/src/ucx/cuda/lib/stubs/${lib}.c" \
      && gcc -shared -fPIC -Wl,-soname,"lib${lib}.so.1" -o "/usr/src/ucx/cuda/lib/stubs/lib${lib}.so" \
             "/usr/src/ucx/cuda/lib/stubs/${lib}.c" || exit 1; \
    done \
 && tar -xJf ucx_1.13.1.orig.tar.xz && cd ucx-1.13.1 && mv debian.upstream debian \
 && { ./autogen.sh > /tmp/ucx-autogen.log 2>&1 || { tail -n 40 /tmp/ucx-autogen.log; false; }; } \
 && { ./contrib/configure-release --prefix=/opt/ucx --with-cuda=/usr/src/ucx/cuda --with-verbs --with-rdmacm \
        --enable-mt --enable-cma --disable-backtrace-detail --disable-static --without-java --disable-doxygen-doc \
        > /tmp/ucx-configure.log 2>&1 || { tail -n 40 /tmp/ucx-configure.log; false; }; } \
 && { make -j"$(nproc)" > /tmp/ucx-make.log 2>&1 || { tail -n 40 /tmp/ucx-make.log; false; }; } \
 && make install > /dev/null \
 && /opt/ucx/bin/ucx_info -b > /tmp/ucx-info.log \
 && { grep -Eq '^#define HAVE_CUDA +1$' /tmp/ucx-info.log \
      || { echo "UCX was built without CUDA support" >&2; false; }; } \
 && test -f /opt/ucx/lib/ucx/libuct_cuda.so.0 && test -f /opt/ucx/lib/ucx/libuct_ib.so.0 \
 && rm -rf /usr/src/ucx /tmp/ucx-*.log

# --- openmpi 4.1.4 [compile]
# Upstream tarball from Debian's source package (from dlenv's package repository, which serves it only after checking it against the lock's sha256; checked here again); Debian's
# patches need autotools regeneration and are not applied. Open MPI records the configure and build host
# (`hostname`, the build container's random name) in ompi_info and libmpi: a fixed `hostname` comes first
# on PATH, so two builds of one lock give the same files (the dates already come from SOURCE_DATE_EPOCH).
# Cluster extras, only where the stack has the components: the ucx PML (InfiniBand, CUDA-aware
# transports); an external PMIx for srun --mpi=pmix, which requires Open MPI to use the libevent
# and hwloc PMIx was built with; --with-slurm fails configure instead of dropping Slurm support.
RUN mkdir -p /usr/src/openmpi && cd /usr/src/openmpi \
 && /usr/lib/apt/apt-helper download-file http://dlenv.packages/sources/openmpi_4.1.4.orig.tar.xz openmpi_4.1.4.orig.tar.xz \
 && echo 'ddaee7dbdb01eb4fab1fda5b5e03e8bbff026711806c095c1f39bb410f99f263  openmpi_4.1.4.orig.tar.xz' | sha256sum --check --strict - \
 && tar -xJf openmpi_4.1.4.orig.tar.xz && cd openmpi-4.1.4 \
 && mkdir /usr/src/openmpi/fixed-host && printf '#!/bin/sh\necho dlenv-build\n' > /usr/src/openmpi/fixed-host/hostname \
 && chmod +x /usr/src/openmpi/fixed-host/hostname && export HOSTNAME=dlenv-build PATH="/usr/src/openmpi/fixed-host:$PATH" \
 && { ./configure --prefix=/opt/openmpi --with-cuda=/opt/cuda-headers/nvidia/cuda_runtime \
        --enable-mpirun-prefix-by-default --disable-mpi-fortran --disable-oshmem --disable-static \
        --with-ucx=/opt/ucx \
        --with-pmix="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/pmix2" --with-libevent=external \
        --with-hwloc=external --with-slurm \
        > /tmp/openmpi-configure.log 2>&1 || { tail -n 40 /tmp/openmpi-configure.log; false; }; } \
 && { make -j"$(nproc)" > /tmp/openmpi-make.log 2>&1 || { tail -n 40 /tmp/openmpi-make.log; false; }; } \
 && make install > /dev/null \
 && /opt/openmpi/bin/ompi_info --parsable --all > /tmp/ompi_info.txt \
 && { grep -q '^mca:mpi:base:param:mpi_built_with_cuda_support:value:true$' /tmp/ompi_info.txt \
      || { echo "Open MPI was built without CUDA support" >&2; false; }; } \
 && { grep -q '^mca:pml:ucx:' /tmp/ompi_info.txt || { echo "Open MPI was built without the ucx PML" >&2; false; }; } \
 && { grep -q '^mca:pmix:ext3x:' /tmp/ompi_info.txt || { echo "Open MPI was built without the external PMIx" >&2; false; }; } \
 && rm -rf /usr/src/openmpi /tmp/openmpi-*.log /tmp/ompi_info.txt

# --- cuda 12.6 [cuda]
COPY dlenv-build/pylock/cuda.txt /etc/dlenv-build/pylock/cuda.txt
RUN /opt/venv/bin/pip install --no-deps --no-compile --only-binary=:all: --target /opt/nvidia/cuda --require-hashes -r /etc/dlenv-build/pylock/cuda.txt && /opt/venv/bin/python -m compileall -q /opt/nvidia/cuda

# --- cudnn 8.9.7.29 [cuda]
COPY dlenv-build/pylock/cudnn.txt /etc/dlenv-build/pylock/cudnn.txt
RUN /opt/venv/bin/pip install --no-deps --no-compile --only-binary=:all: --target /opt/nvidia/cudnn --require-hashes -r /etc/dlenv-build/pylock/cudnn.txt && /opt/venv/bin/python -m compileall -q /opt/nvidia/cudnn

# --- nccl 2.21.5 [cuda]
COPY dlenv-build/pylock/nccl.txt /etc/dlenv-build/pylock/nccl.txt
RUN /opt/venv/bin/pip install --no-deps --no-compile --only-binary=:all: --target /opt/nvidia/nccl --require-hashes -r /etc/dlenv-build/pylock/nccl.txt && /opt/venv/bin/python -m compileall -q /opt/nvidia/nccl
COPY dlenv-build/constraints.txt /etc/dlenv-build/constraints.txt
ENV PIP_CONSTRAINT=/etc/dlenv-build/constraints.txt

# --- numpy 1.26.4 [python]
COPY dlenv-build/pylock/numpy.txt /etc/dlenv-build/pylock/numpy.txt
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /etc/dlenv-build/pylock/numpy.txt

# --- setuptools 69.5.1 [python]
COPY dlenv-build/pylock/setuptools.txt /etc/dlenv-build/pylock/setuptools.txt
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /etc/dlenv-build/pylock/setuptools.txt

# --- chainer 7.8.1 [python]
COPY dlenv-build/pylock/chainer.txt /etc/dlenv-build/pylock/chainer.txt
RUN /opt/venv/bin/pip install --no-build-isolation --no-deps --require-hashes -r /etc/dlenv-build/pylock/chainer.txt

# --- cupy 13.6.0 [python]
COPY dlenv-build/pylock/cupy.txt /etc/dlenv-build/pylock/cupy.txt
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /etc/dlenv-build/pylock/cupy.txt

# --- cython 3.0.12 [python]
COPY dlenv-build/pylock/cython.txt /etc/dlenv-build/pylock/cython.txt
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /etc/dlenv-build/pylock/cython.txt

# --- mpi4py 3.1.6 [python]
COPY dlenv-build/pylock/mpi4py.txt /etc/dlenv-build/pylock/mpi4py.txt
# -g0: pip compiles the sdist in a random /tmp/pip-install-* folder, which debug info would record (no
# -ffile-prefix-map can name a random folder): without it two builds of one lock differ.
RUN CFLAGS=-g0 MPICC=/opt/openmpi/bin/mpicc /opt/venv/bin/pip install --no-build-isolation --no-deps --require-hashes -r /etc/dlenv-build/pylock/mpi4py.txt

FROM dlenv/base:bookworm-minbase-324ac74f0d4e AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Host keys that packages generate at install time would be shared by every container (and stay in
# this layer): they go in the same step; keys are made per run where ssh is used. The downloaded .debs
# (the bootstrapped base has no docker-clean apt hook), apt's binary caches and the install logs go
# too: nothing reads them, and the last two differ between two builds of one lock. So do ldconfig's
# aux-cache (libc-bin's trigger) and the day useradd writes into /etc/shadow unless SOURCE_DATE_EPOCH
# dates it (the runtime stage has no such ENV: it would reach the users' own builds).
COPY dlenv-runtime/apt.txt /etc/dlenv/apt-runtime.txt
RUN apt-get update \
 && xargs --no-run-if-empty --arg-file=/etc/dlenv/apt-runtime.txt env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log \
          /var/cache/ldconfig/aux-cache /etc/ssh/ssh_host_* \
 && SOURCE_DATE_EPOCH=1735689600 useradd --create-home --uid 1000 --user-group --shell /bin/bash dlenv \
 && install -d -o dlenv -g dlenv /workspace
COPY --from=build /opt/ucx /opt/ucx
COPY --from=build /opt/openmpi /opt/openmpi
COPY --from=build /opt/nvidia/cuda /opt/nvidia/cuda
COPY --from=build /opt/nvidia/cudnn /opt/nvidia/cudnn
COPY --from=build /opt/nvidia/nccl /opt/nvidia/nccl
COPY --from=build /opt/venv /opt/venv
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig && rm -f /var/cache/ldconfig/aux-cache
ENV PATH="/opt/openmpi/bin:/opt/ucx/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    CHAINERMN_FORCE_ABORT_ON_EXCEPTION="1" \
    CHAINER_WARN_VERSION_MISMATCH="0" \
    OMPI_MCA_opal_warn_on_missing_libcuda="0" \
    OMPI_MCA_pml_ucx_devices="any" \
    OMPI_MCA_pml_ucx_tls="any"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-324ac74f0d4e" \
      org.dlenv.component.chainer="7.8.1" \
      org.dlenv.component.cuda="12.6" \
      org.dlenv.component.cuda-headers="12.6" \
      org.dlenv.component.cudnn="8.9.7.29" \
      org.dlenv.component.cupy="13.6.0" \
      org.dlenv.component.cython="3.0.12" \
      org.dlenv.component.mpi4py="3.1.6" \
      org.dlenv.component.nccl="2.21.5" \
      org.dlenv.component.numpy="1.26.4" \
      org.dlenv.component.openmpi="4.1.4" \
      org.dlenv.component.openssh="9.2" \
      org.dlenv.component.pmix="4.2.2" \
      org.dlenv.component.python="3.11" \
      org.dlenv.component.rdma-core="44.0" \
      org.dlenv.component.setuptools="69.5.1" \
      org.dlenv.component.ucx="1.13.1" \
      org.dlenv.components="openssh=9.2,pmix=4.2.2,python=3.11,rdma-core=44.0,cuda-headers=12.6,ucx=1.13.1,openmpi=4.1.4,cuda=12.6,cudnn=8.9.7.29,nccl=2.21.5,numpy=1.26.4,setuptools=69.5.1,chainer=7.8.1,cupy=13.6.0,cython=3.0.12,mpi4py=3.1.6" \
      org.dlenv.dlenv-version="0.1.0" \
      org.dlenv.lock="40b49dbb2dddaf2f83cd4bde2dc3a39136ebd2644f128b6ffea0c07933813232" \
      org.dlenv.source.openmpi="openmpi=4.1.4-3 openmpi_4.1.4.orig.tar.xz sha256:ddaee7dbdb01eb4fab1fda5b5e03e8bbff026711806c095c1f39bb410f99f263" \
      org.dlenv.source.ucx="ucx=1.13.1-1 ucx_1.13.1.orig.tar.xz sha256:1a88e09ca1b406c046a469c2ae271d2c330050b5664c0bcd9890e26c6ef09f3c" \
      org.dlenv.stack="chainermn" \
      org.opencontainers.image.description="ChainerMN (Chainer 7.8.1, CuPy 13, CUDA 12, cuDNN 8, NCCL) with CUDA-aware Open MPI 4.1 and mpi4py." \
      org.opencontainers.image.title="dlenv/chainermn"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
