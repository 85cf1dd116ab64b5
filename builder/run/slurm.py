"""A local Slurm cluster from a stack's image: the node image (`dlenv/<stack>-slurm:<hash16>`, built
through the SDK engine on the stack's promoted image), and a controller plus N node containers on a
private bridge network with fixed host names (ctl, node1..nodeN).

Owns the run's secrets (a fresh munge key and slurm.conf in a 0700 folder of the state dir, mounted
read-only; never in an image), the cluster's state file (so `submit` and `down` find it), waiting until
every node is idle, and teardown by label: anything that fails or is interrupted while a cluster comes
up leaves no container, network or key behind. Jobs are builder.run.slurm_jobs; text is outputs/slurm.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import docker.errors

from builder.engine import sdk
from builder.engine.containers import ContainerOptions, interrupts_deferred, start_container
from builder.engine.dockerapi import image_attrs, image_labels
from builder.errors import EngineError, SlurmError
from builder.fileio import write_text_atomic
from builder.names import (MUNGE_DIR, ROLE_LABEL, RUNTIME_UID, SLURM_CLUSTER_LABEL, SLURM_CONF,
                           SLURM_CONTROLLER_HOST, SLURM_NETWORK_ROLE, SLURM_NODE_LABEL, SLURM_ROLES,
                           SLURM_SECRETS, SLURM_START, SLURM_VERSION_LABEL, WORKDIR, slurm_node_tag)
from builder.outputs.slurm import (check_cluster_id, container_name, memory_mib, network_name, node_hosts,
                                   node_image, sinfo_nodes, slurm_conf, unusable_nodes, version_label_dockerfile)

STATE_FILE = "slurm-cluster.json"
READY_SECONDS = 90
REMOVAL_SECONDS = 30      # for a container's removal that another began
SHM_SIZE = "1g"


# ------------------------------------------------------------------------------------ node image

def ensure_node_image(client, stack: str, base_image: str, content_hash: str, work_dir: Path, log_path: Path,
                      buildargs: dict | None = None, on_progress=None, apt_sources: bytes = b"") -> tuple[str, bool]:
    """The node image's tag, built unless an image with that tag and this node hash exists: (tag, built).
    Two SDK builds: the node layer, then a label with the Slurm version the first one installed."""
    user = (image_attrs(client, base_image) or {}).get("Config", {}).get("User") or str(RUNTIME_UID)
    spec = node_image(stack, base_image, content_hash, user, apt_sources)
    tag = slurm_node_tag(stack, content_hash)
    attrs = image_attrs(client, tag)
    if attrs and image_labels(attrs).get(SLURM_NODE_LABEL) == spec.node_hash \
            and image_labels(attrs).get(SLURM_VERSION_LABEL):
        return tag, False
    context = Path(tempfile.mkdtemp(prefix="slurm-context-", dir=work_dir))
    try:
        (context / "Dockerfile").write_text(spec.dockerfile)
        for name, (data, mode) in spec.files.items():
            (context / name).write_bytes(data)
            (context / name).chmod(mode)
        sdk.build(client, context, tag, dict(buildargs or {}), log_path, on_progress=on_progress)
        version = _slurm_version(client, tag)
        for name in spec.files:
            (context / name).unlink()
        (context / "Dockerfile").write_text(version_label_dockerfile(tag, SLURM_VERSION_LABEL, version))
        sdk.build(client, context, tag, {}, log_path.with_suffix(".label.log"), on_progress=on_progress)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag, True


def _slurm_version(client, image: str) -> str:
    """slurmd's Debian version in `image`. Read from the stopped container's log, again for a moment
    when it is still empty: the engine may report the exit before its log copier has written the
    short output (seen with this engine: an empty version three runs in a row, then none)."""
    container = client.containers.create(image, ["dpkg-query", "-W", "-f=${Version}\\n", "slurmd"],
                                         network_mode="none", labels={ROLE_LABEL: "slurm-build"})
    try:
        container.start()
        code = container.wait().get("StatusCode")
        out = b""
        for _ in range(20):
            out = container.logs(stdout=True, stderr=False)
            if out.strip() or code != 0:
                break
            time.sleep(0.25)
        if code != 0:
            raise SlurmError(f"slurmd is not installed in {image} (dpkg-query exit status {code})",
                             hint="remove the image and run again")
        return out.decode("utf-8", "replace").strip()
    finally:
        container.remove(force=True)


# ------------------------------------------------------------------------------------ state

@dataclass
class ClusterState:
    cluster_id: str
    image: str
    nodes: int
    workspace: str | None     # host folder at /workspace, or None (the image's own /workspace)
    secrets: str              # host folder: munge/munge.key and slurm.conf

    @property
    def network(self) -> str:
        return network_name(self.cluster_id)

    @property
    def controller(self) -> str:
        return container_name(self.cluster_id, SLURM_CONTROLLER_HOST)

    def node(self, host: str) -> str:
        return container_name(self.cluster_id, host)

    @property
    def containers(self) -> list:
        return [self.controller] + [self.node(h) for h in node_hosts(self.nodes)]


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(path: Path) -> ClusterState | None:
    try:
        data = json.loads(Path(path).read_text())
        state = ClusterState(**{k: data[k] for k in ("cluster_id", "image", "nodes", "workspace", "secrets")})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise SlurmError(f"the cluster state file {path} is damaged",
                         hint="run `dlenv slurm down --all` to remove every dlenv Slurm cluster") from None
    check_cluster_id(state.cluster_id)
    return state


def _save_state(path: Path, state: ClusterState) -> None:
    write_text_atomic(path, json.dumps(asdict(state), indent=2) + "\n")


# ------------------------------------------------------------------------------------ up / down

def _write_secrets(state: ClusterState, conf: str) -> None:
    folder = Path(state.secrets)
    folder.mkdir(mode=0o700, parents=True)
    (folder / "munge").mkdir(mode=0o700)
    key = folder / "munge" / "munge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(1024))
    (folder / "slurm.conf").write_text(conf)
    (folder / "slurm.conf").chmod(0o644)


def _options(state: ClusterState, host: str, on_warning) -> ContainerOptions:
    folder = Path(state.secrets)
    return ContainerOptions(
        shm_size=SHM_SIZE, user="0", workspace=Path(state.workspace) if state.workspace else None,
        volumes=[(str(folder / "slurm.conf"), SLURM_CONF, "ro"), (str(folder / "munge"), SLURM_SECRETS, "ro")],
        network_name=state.network, hostname=host, aliases=[host], tmpfs={MUNGE_DIR: "mode=0700"},
        labels={SLURM_CLUSTER_LABEL: state.cluster_id}, on_warning=on_warning)


def up(client, image: str, nodes: int, workspace: Path | None, state_dir: Path, *, keep_state: bool = True,
       on_warning=None) -> ClusterState:
    """Start a cluster of `nodes` nodes from the node image and wait until every node is idle. With
    keep_state the state file is written first (so `down` finds a half-started cluster too)."""
    info = client.info()
    cluster_id = secrets.token_hex(4)
    state = ClusterState(cluster_id, image, nodes, str(Path(workspace).resolve()) if workspace else None,
                         str(Path(state_dir) / f"slurm-{cluster_id}"))
    conf = slurm_conf(cluster_id, nodes, int(info.get("NCPU") or 1), memory_mib(info.get("MemTotal") or 0))
    path = state_path(state_dir)
    try:
        if keep_state:
            _save_state(path, state)
        _write_secrets(state, conf)
        with interrupts_deferred():     # made whole before an interrupt's down() looks for it
            client.networks.create(state.network, driver="bridge",
                                   labels={ROLE_LABEL: SLURM_NETWORK_ROLE, SLURM_CLUSTER_LABEL: cluster_id})
        start_container(client, image, _options(state, SLURM_CONTROLLER_HOST, on_warning), SLURM_ROLES[0],
                        command=[SLURM_START, "controller"], name=state.controller)
        for host in node_hosts(nodes):
            start_container(client, image, _options(state, host, on_warning), SLURM_ROLES[1],
                            command=[SLURM_START, "node"], name=state.node(host))
        wait_ready(client, state)
        if workspace is not None:
            _check_workspace(client, state)
    except BaseException:
        down(client, state, path if keep_state else None)
        time.sleep(0.5)   # a `docker run` cut off client-side may still be created by the daemon: look again
        down(client, state, None)
        raise
    return state


def exec_in(client, name: str, argv: list, user: str = "0") -> tuple[int, str]:
    try:
        code, out = client.containers.get(name).exec_run(argv, user=user)
    except docker.errors.NotFound:
        raise SlurmError(f"container {name} is gone", hint="run `dlenv slurm down`, then `dlenv slurm up` again") from None
    return code, (out or b"").decode("utf-8", "replace")


def _logs(client, name: str) -> str:
    try:
        text = client.containers.get(name).logs(tail=8).decode("utf-8", "replace")
    except docker.errors.APIError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-600:]


def wait_ready(client, state: ClusterState, seconds: float = READY_SECONDS) -> None:
    """Until every node is `idle` in sinfo; fails fast on a dead daemon or an unusable node."""
    deadline = time.monotonic() + seconds
    want = set(node_hosts(state.nodes))
    while True:
        for name in state.containers:
            try:
                running = client.containers.get(name).attrs["State"]["Running"]
            except docker.errors.NotFound:
                running = False
            if not running:
                raise SlurmError(f"{name} stopped while the cluster came up: {_logs(client, name)}",
                                 hint="the node image may be broken: remove it and run again")
        code, out = exec_in(client, state.controller, ["sinfo", "-h", "-N", "-o", "%N %t"])
        states = sinfo_nodes(out) if code == 0 else {}
        if want <= {n for n, s in states.items() if s == "idle"}:
            return
        bad = unusable_nodes(states)
        if bad:
            raise SlurmError(f"Slurm will not use these nodes: {', '.join(bad)}",
                             hint=f"`docker logs {state.controller}` says why")
        if time.monotonic() > deadline:
            raise SlurmError(f"the nodes were not idle after {seconds:.0f}s: {states or out.strip()[:200]}",
                             hint=f"`docker logs {state.controller}` says why")
        time.sleep(0.2)


def _check_workspace(client, state: ClusterState) -> None:
    """slurmd opens a job's output as the image user in /workspace: a folder that user cannot write
    makes every job fail at launch with no output at all."""
    node = state.node(node_hosts(1)[0])
    code, _ = exec_in(client, node, ["test", "-w", WORKDIR], user=f"{RUNTIME_UID}:{RUNTIME_UID}")
    if code != 0:
        raise SlurmError(f"uid {RUNTIME_UID} (the image user, who runs the jobs) cannot write to {state.workspace}",
                         hint=f"run from a folder it can write (e.g. `chown {RUNTIME_UID} FOLDER`): jobs write "
                              "slurm-<id>.out and their results there")


def down(client, state: ClusterState | None, path: Path | None = None, cluster_id: str | None = None) -> int:
    """Remove the cluster's containers and network (by its label), its secrets and its state file.
    cluster_id None with no state: every dlenv Slurm cluster. Returns the number of containers removed."""
    label = SLURM_CLUSTER_LABEL if state is None and cluster_id is None \
        else f"{SLURM_CLUSTER_LABEL}={state.cluster_id if state else check_cluster_id(cluster_id)}"
    removed = _remove_containers(client, label)
    for net in client.networks.list(filters={"label": label}):
        try:
            net.remove()
        except docker.errors.NotFound:
            pass
    if state is not None:
        shutil.rmtree(state.secrets, ignore_errors=True)
    if path is not None:
        Path(path).unlink(missing_ok=True)
    return removed


def _remove_containers(client, label: str) -> int:
    """Remove the containers with `label`; the number removed. Listed without inspecting each (one may go
    meanwhile), and a removal already under way (the engine's own, another `down`) is waited for, not an
    error: the network can go only after it. Seen when SIGHUP stopped an `up` that was creating a node."""
    removed, going = 0, []
    for row in client.api.containers(all=True, filters={"label": label}):
        name = (row.get("Names") or [row["Id"][:12]])[0].lstrip("/")
        try:
            client.api.remove_container(row["Id"], force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
                raise EngineError(f"cannot remove {name}: {exc.explanation}") from None
            going.append(row["Id"])
    deadline = time.monotonic() + REMOVAL_SECONDS
    for container_id in going:
        while time.monotonic() < deadline:
            try:
                client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                break
            time.sleep(0.2)
    return removed


def remove_all_secrets(state_dir: Path) -> None:
    """The secrets folders of clusters whose state file is gone (after `down --all`)."""
    for folder in Path(state_dir).glob("slurm-*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def running(client, state: ClusterState) -> bool:
    try:
        return client.containers.get(state.controller).attrs["State"]["Running"]
    except docker.errors.NotFound:
        return False
