# Rendered by dlenv 0.1.0 for stack "chainer-gpu" (python -> chainer -> chainer-gpu). Do not edit: change the stack file.
# Two stages: "build" holds compilers, headers, sources and the CA bundle; "runtime" receives only
# install prefixes and the venv, one COPY per layer group, heaviest and most stable first.

FROM dlenv/base:bookworm-minbase-1276fbca1838 AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ca-certificates python3 python3-dev python3-venv \
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

FROM dlenv/base:bookworm-minbase-1276fbca1838 AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Host keys that packages generate at install time would be shared by every container (and stay in
# this layer): they go in the same step; keys are made per run where ssh is used.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
 && useradd --create-home --uid 1000 --user-group --shell /bin/bash dlenv \
 && install -d -o dlenv -g dlenv /workspace
COPY --from=build /opt/nvidia/cuda /opt/nvidia/cuda
COPY --from=build /opt/nvidia/cudnn /opt/nvidia/cudnn
COPY --from=build /opt/nvidia/nccl /opt/nvidia/nccl
COPY --from=build /opt/venv /opt/venv
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig
ENV PATH="/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    CHAINER_WARN_VERSION_MISMATCH="0"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-1276fbca1838" \
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
      org.dlenv.stack="chainer-gpu" \
      org.opencontainers.image.description="Chainer 7.8.1 with CuPy 13 for CUDA 12, cuDNN 8 and NCCL." \
      org.opencontainers.image.title="dlenv/chainer-gpu"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
