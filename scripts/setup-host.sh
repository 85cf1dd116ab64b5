#!/usr/bin/env bash
# Install and start what dlenv needs on a fresh Debian host: the Docker engine (Debian's docker.io),
# mmdebstrap (bootstraps the default base) and docker-registry (push/pull tests). Needs root.
# Idempotent: installs only what is missing, starts dockerd only when no engine answers.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /usr/bin/docker ] || need+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
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
