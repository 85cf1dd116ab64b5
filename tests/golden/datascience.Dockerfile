# Rendered by dlenv 0.1.0 for stack "datascience" (python -> datascience). Do not edit: change the stack file.
# Two stages: "build" holds compilers, headers, sources and the CA bundle; "runtime" receives only
# install prefixes and the venv, one COPY per layer group, heaviest and most stable first.
# Locked by datascience.lock (pins 3af74382b2259581).

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
COPY dlenv-build/constraints.txt /etc/dlenv-build/constraints.txt
ENV PIP_CONSTRAINT=/etc/dlenv-build/constraints.txt

# --- numpy 1.26.4 [python]
COPY dlenv-build/pylock/numpy.txt /etc/dlenv-build/pylock/numpy.txt
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /etc/dlenv-build/pylock/numpy.txt

# --- the stack's own Python packages (last: changing them reuses every layer above)
COPY dlenv-build/pylock/python_packages.txt /etc/dlenv-build/pylock/python_packages.txt
RUN /opt/venv/bin/pip install --prefix /opt/leaf --no-deps --require-hashes -r /etc/dlenv-build/pylock/python_packages.txt

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
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/leaf /opt/leaf
COPY dlenv-runtime/profile.sh /etc/profile.d/dlenv.sh
COPY dlenv-runtime/ld.so.conf /etc/ld.so.conf.d/dlenv.conf
RUN ldconfig && rm -f /var/cache/ldconfig/aux-cache
ENV PATH="/opt/leaf/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    MPLBACKEND="Agg" \
    NUMBA_CACHE_DIR="/tmp/numba-cache" \
    PYTHONPATH="/opt/leaf/lib/python3.11/site-packages"
ARG DLENV_CONTENT_HASH=unset
LABEL org.dlenv.content-hash="${DLENV_CONTENT_HASH}" \
      org.dlenv.base="dlenv/base:bookworm-minbase-324ac74f0d4e" \
      org.dlenv.component.numpy="1.26.4" \
      org.dlenv.component.python="3.11" \
      org.dlenv.components="python=3.11,numpy=1.26.4" \
      org.dlenv.dlenv-version="0.1.0" \
      org.dlenv.lock="3af74382b2259581a535507f4f35e4f44c0994b466507f402c6d540be8890d39" \
      org.dlenv.stack="datascience" \
      org.opencontainers.image.description="Jupyter Server, scikit-learn, pandas, matplotlib and librosa on Python 3.11." \
      org.opencontainers.image.title="dlenv/datascience"
USER 1000:1000
WORKDIR /workspace
CMD ["bash"]
