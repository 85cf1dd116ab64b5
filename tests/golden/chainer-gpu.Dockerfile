# Rendered by dlenv 0.1.0 for stack "chainer-gpu" (python -> chainer -> chainer-gpu). Do not edit: change the stack file.
# Two stages: "build" holds compilers, headers, sources and the CA bundle; "runtime" receives only
# install prefixes and the venv, one COPY per layer group, heaviest and most stable first.
# Locked by chainer-gpu.lock (pins b5df8592d6e5b669).

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
COPY --from=build /opt/nvidia/cuda /opt/nvidia/cuda
COPY --from=build /opt/nvidia/cudnn /opt/nvidia/cudnn
COPY --from=build /opt/nvidia/nccl /opt/nvidia/nccl
COPY --from=build /opt/venv /opt/venv
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig && rm -f /var/cache/ldconfig/aux-cache
ENV PATH="/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    CHAINER_WARN_VERSION_MISMATCH="0"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-324ac74f0d4e" \
      org.dlenv.component.chainer="7.8.1" \
      org.dlenv.component.cuda="12.6" \
      org.dlenv.component.cudnn="8.9.7.29" \
      org.dlenv.component.cupy="13.6.0" \
      org.dlenv.component.cython="3.0.12" \
      org.dlenv.component.nccl="2.21.5" \
      org.dlenv.component.numpy="1.26.4" \
      org.dlenv.component.python="3.11" \
      org.dlenv.component.setuptools="69.5.1" \
      org.dlenv.components="python=3.11,cuda=12.6,cudnn=8.9.7.29,nccl=2.21.5,numpy=1.26.4,setuptools=69.5.1,chainer=7.8.1,cupy=13.6.0,cython=3.0.12" \
      org.dlenv.dlenv-version="0.1.0" \
      org.dlenv.lock="b5df8592d6e5b669efaf2537b825be51368dadf472f3a2e9301a2a0e849ed27f" \
      org.dlenv.stack="chainer-gpu" \
      org.opencontainers.image.description="Chainer 7.8.1 with CuPy 13 for CUDA 12, cuDNN 8 and NCCL." \
      org.opencontainers.image.title="dlenv/chainer-gpu"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
