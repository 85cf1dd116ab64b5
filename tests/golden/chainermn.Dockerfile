# Rendered by dlenv 0.1.0 for stack "chainermn" (python -> chainer -> chainer-gpu -> chainermn). Do not edit: change the stack file.
# Two stages: "build" holds compilers, headers, sources and the CA bundle; "runtime" receives only
# install prefixes and the venv, one COPY per layer group, heaviest and most stable first.

FROM dlenv/base:bookworm-minbase-1276fbca1838 AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends autoconf automake build-essential ca-certificates dpkg-dev file libevent-dev libhwloc-dev libibverbs-dev libnuma-dev libpmix-dev librdmacm-dev libtool perl pkg-config python3 python3-dev python3-venv xz-utils zlib1g-dev \
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
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /opt/cuda-headers nvidia-cuda-runtime-cu12==12.6.77 \
 && test -f /opt/cuda-headers/nvidia/cuda_runtime/include/cuda.h

# --- ucx 1.13.1 [compile]
# UCX from Debian's source package: the upstream tarball (apt checks its signature and checksum),
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
 && apt-get update \
 && apt-get source --download-only --only-source ucx=1.13.1-1 \
 && rm -rf /var/lib/apt/lists/* \
 && /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /usr/src/ucx/wheels \
        nvidia-cuda-nvcc-cu12==12.6.85 nvidia-nvml-dev-cu12==12.6.77 \
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
 && { /opt/ucx/bin/ucx_info -b | grep -Eq '^#define HAVE_CUDA +1$' \
      || { echo "UCX was built without CUDA support" >&2; false; }; } \
 && test -f /opt/ucx/lib/ucx/libuct_cuda.so.0 && test -f /opt/ucx/lib/ucx/libuct_ib.so.0 \
 && rm -rf /usr/src/ucx /tmp/ucx-*.log

# --- openmpi 4.1.4 [compile]
# Upstream tarball from Debian's source package (apt checks its signature and checksum); Debian's
# patches need autotools regeneration and are not applied.
# Cluster extras, only where the stack has the components: the ucx PML (InfiniBand, CUDA-aware
# transports); an external PMIx for srun --mpi=pmix, which requires Open MPI to use the libevent
# and hwloc PMIx was built with; --with-slurm fails configure instead of dropping Slurm support.
RUN mkdir -p /usr/src/openmpi && cd /usr/src/openmpi \
 && apt-get update \
 && apt-get source --download-only --only-source openmpi=4.1.4-3 \
 && rm -rf /var/lib/apt/lists/* \
 && tar -xJf openmpi_4.1.4.orig.tar.xz && cd openmpi-4.1.4 \
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
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /opt/nvidia/cuda nvidia-cublas-cu12==12.6.4.1 nvidia-cuda-nvrtc-cu12==12.6.85 nvidia-cuda-runtime-cu12==12.6.77 nvidia-cufft-cu12==11.3.0.4 nvidia-curand-cu12==10.3.7.77 nvidia-cusolver-cu12==11.7.1.2 nvidia-cusparse-cu12==12.5.4.2 nvidia-nvjitlink-cu12==12.6.85

# --- cudnn 8.9.7.29 [cuda]
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /opt/nvidia/cudnn nvidia-cudnn-cu12==8.9.7.29

# --- nccl 2.21.5 [cuda]
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: --target /opt/nvidia/nccl nvidia-nccl-cu12==2.21.5
COPY dlenv-build/constraints.txt /etc/dlenv-build/constraints.txt
ENV PIP_CONSTRAINT=/etc/dlenv-build/constraints.txt

# --- numpy 1.26.4 [python]
RUN /opt/venv/bin/pip install numpy==1.26.4

# --- setuptools 69.5.1 [python]
RUN /opt/venv/bin/pip install setuptools==69.5.1 wheel==0.43.0

# --- chainer 7.8.1 [python]
RUN /opt/venv/bin/pip install --no-build-isolation chainer==7.8.1

# --- cupy 13.6.0 [python]
RUN /opt/venv/bin/pip install cupy-cuda12x==13.6.0

# --- cython 3.0.12 [python]
RUN /opt/venv/bin/pip install Cython==3.0.12

# --- mpi4py 3.1.6 [python]
RUN MPICC=/opt/openmpi/bin/mpicc /opt/venv/bin/pip install --no-build-isolation mpi4py==3.1.6

FROM dlenv/base:bookworm-minbase-1276fbca1838 AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Host keys that packages generate at install time would be shared by every container (and stay in
# this layer): they go in the same step; keys are made per run where ssh is used.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates ibverbs-providers libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15 libibverbs1 libnuma1 libpmix2 librdmacm1 openssh-client openssh-server python3 zlib1g \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
 && useradd --create-home --uid 1000 --user-group --shell /bin/bash dlenv \
 && install -d -o dlenv -g dlenv /workspace
COPY --from=build /opt/ucx /opt/ucx
COPY --from=build /opt/openmpi /opt/openmpi
COPY --from=build /opt/nvidia/cuda /opt/nvidia/cuda
COPY --from=build /opt/nvidia/cudnn /opt/nvidia/cudnn
COPY --from=build /opt/nvidia/nccl /opt/nvidia/nccl
COPY --from=build /opt/venv /opt/venv
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig
ENV PATH="/opt/openmpi/bin:/opt/ucx/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    CHAINERMN_FORCE_ABORT_ON_EXCEPTION="1" \
    CHAINER_WARN_VERSION_MISMATCH="0" \
    OMPI_MCA_opal_warn_on_missing_libcuda="0" \
    OMPI_MCA_pml_ucx_devices="any" \
    OMPI_MCA_pml_ucx_tls="any"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-1276fbca1838" \
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
      org.dlenv.stack="chainermn" \
      org.opencontainers.image.description="ChainerMN (Chainer 7.8.1, CuPy 13, CUDA 12, cuDNN 8, NCCL) with CUDA-aware Open MPI 4.1 and mpi4py." \
      org.opencontainers.image.title="dlenv/chainermn"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
