#!/usr/bin/env bash
# Install and start what dlenv needs on a fresh Debian host: the Docker engine (Debian's docker.io),
# mmdebstrap (bootstraps the default base), buildah (the optional reproducible engine, `--engine
# buildah`) and the tools the tests drive. Needs root.
# Idempotent: installs only what is missing, starts dockerd only when no engine answers.
set -euo pipefail

# command -> Debian package. tmux drives the interactive shell test, docker-registry and
# htpasswd (apache2-utils) the push/pull tests, openssl makes the CA-bundle test's certificate;
# dpkg-scanpackages (dpkg-dev) indexes dlenv's package repository for every build. The HPC runtime tests run a
# Slurm on the host (slurmd, slurmctld, slurm-client, munge; libpmix-dev gives Slurm's PMIx plugin the
# libpmix.so it loads) and start the image through Charliecloud (ch-run, ch-convert; pigz makes ch-convert's
# compression use both cores; squashfs-tools for --format squashfs) and rootless podman (uidmap for newuidmap).
need=()
[ -x /usr/bin/docker ] || need+=(docker.io)
for pair in dockerd:docker.io mmdebstrap:mmdebstrap buildah:buildah tmux:tmux docker-registry:docker-registry \
            htpasswd:apache2-utils openssl:openssl dpkg-scanpackages:dpkg-dev \
            slurmd:slurmd slurmctld:slurmctld sbatch:slurm-client munged:munge ch-run:charliecloud-runtime \
            ch-convert:charliecloud-builders mksquashfs:squashfs-tools squashfuse:squashfuse pigz:pigz \
            podman:podman newuidmap:uidmap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
dpkg -s libpmix-dev >/dev/null 2>&1 || need+=(libpmix-dev)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-host: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if /usr/bin/docker info >/dev/null 2>&1; then
  echo "setup-host: Docker engine already running"
  exit 0
fi
echo "setup-host: starting dockerd"
mkdir -p /var/log
nohup dockerd >/var/log/dlenv-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if /usr/bin/docker info >/dev/null 2>&1; then
    echo "setup-host: Docker engine up ($(/usr/bin/docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "setup-host: dockerd did not come up within 60 s; last log lines:" >&2
tail -n 20 /var/log/dlenv-dockerd.log >&2
exit 1
