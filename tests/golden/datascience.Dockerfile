# Rendered by dlenv 0.1.0 for stack "datascience" (python -> datascience). Do not edit: change the stack file.
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
COPY dlenv-build/constraints.txt /etc/dlenv-build/constraints.txt
ENV PIP_CONSTRAINT=/etc/dlenv-build/constraints.txt

# --- numpy 1.26.4 [python]
RUN /opt/venv/bin/pip install numpy==1.26.4

# --- the stack's own Python packages (last: changing them reuses every layer above)
RUN /opt/venv/bin/pip install --prefix /opt/leaf jupyter-server==2.14.2 scikit-learn==1.5.2 scipy==1.13.1 pandas==2.2.3 matplotlib==3.9.2 numba==0.60.0 librosa==0.10.2.post1

FROM dlenv/base:bookworm-minbase-1276fbca1838 AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Host keys that packages generate at install time would be shared by every container (and stay in
# this layer): they go in the same step; keys are made per run where ssh is used.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
 && useradd --create-home --uid 1000 --user-group --shell /bin/bash dlenv \
 && install -d -o dlenv -g dlenv /workspace
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/leaf /opt/leaf
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig
ENV PATH="/opt/leaf/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    MPLBACKEND="Agg" \
    NUMBA_CACHE_DIR="/tmp/numba-cache" \
    PYTHONPATH="/opt/leaf/lib/python3.11/site-packages"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-1276fbca1838" \
      org.dlenv.component.numpy="1.26.4" \
      org.dlenv.component.python="3.11" \
      org.dlenv.components="python=3.11,numpy=1.26.4" \
      org.dlenv.dlenv-version="0.1.0" \
      org.dlenv.stack="datascience" \
      org.opencontainers.image.description="Jupyter Server, scikit-learn, pandas, matplotlib and librosa on Python 3.11." \
      org.opencontainers.image.title="dlenv/datascience"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
