"""The Kubernetes export: a Kubeflow MPIJob (kubeflow.org/v2beta1) whose launcher runs mpirun and
whose workers run sshd as the image's non-root user, every pod on the image of one content hash.
Pure: the document is built as Python data, dumped as YAML and placed in its template.
"""

from __future__ import annotations

import re

import yaml

from builder.errors import ExportError
from builder.names import K8S_LABEL_PREFIX, RUNTIME_HOME, RUNTIME_UID, RUNTIME_USER, TAG_CHARS, WORKDIR
from builder.outputs.exports.common import (
    command_words,
    k8s_quantity,
    need_registry,
    openmpi_version,
    positive,
    registry_ref,
    render,
    stack_env,
)
from builder.plan.plan import Plan

SSH_PORT = 2222                      # sshd of the MPIJob workers runs as the image user: no port below 1024
SSH_AUTH_PATH = f"{RUNTIME_HOME}/.ssh"       # where mpi-operator mounts the job's ssh key pair

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RSH_ARGS = (f"-p {SSH_PORT} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
             "-o LogLevel=ERROR -o ConnectionAttempts=10")
_SSHD = ("/usr/sbin/sshd", "-De", "-f", "/dev/null", "-p", str(SSH_PORT),
         "-o", f"HostKey={SSH_AUTH_PATH}/id_rsa", "-o", f"AuthorizedKeysFile={SSH_AUTH_PATH}/authorized_keys",
         "-o", "PidFile=none", "-o", "StrictModes=no", "-o", "PasswordAuthentication=no",
         "-o", "KbdInteractiveAuthentication=no")


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated mappings (labels, security contexts) written out in full, not as YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def mpijob(plan: Plan, command, *, registry: str | None, workers: int, gpus_per_worker: int,
           slots_per_worker: int | None = None, name: str | None = None, shm_size: str = "8g") -> str:
    """A Kubeflow MPIJob (kubeflow.org/v2beta1): one launcher runs mpirun, WORKERS pods run sshd
    as the image's non-root user; every pod uses the image of this content hash."""
    words = command_words(command)
    registry = need_registry(registry, "an MPIJob", plan.resolved.name)
    workers = positive("--workers", workers)
    gpus = positive("--gpus-per-worker", gpus_per_worker, minimum=0)
    slots = positive("--slots-per-worker", slots_per_worker if slots_per_worker is not None else max(gpus, 1))
    name = _job_name(plan, name)
    _check_stack(plan)
    image = registry_ref(plan, registry)
    launcher_command = _launcher_command(plan, workers * slots, words)
    doc = _document(plan, name, image, workers=workers, slots=slots, gpus=gpus, shm_size=shm_size,
                    launcher_command=launcher_command)
    body = yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True).rstrip("\n")
    return render("mpijob.yaml.j2", stack=plan.resolved.name, content_hash=plan.content_hash, image=image,
                  registry=registry, workers=workers, slots=slots, gpus=gpus, ranks=workers * slots,
                  ssh_port=SSH_PORT, ssh_path=SSH_AUTH_PATH, user=RUNTIME_USER, uid=RUNTIME_UID,
                  openmpi=openmpi_version(plan), body=body)


def _job_name(plan: Plan, name: str | None) -> str:
    name = name or f"dlenv-{plan.resolved.name}"[:63].rstrip("-")
    if not _K8S_NAME.match(name):
        raise ExportError(f"--name {name!r} is not a Kubernetes object name",
                          hint="lowercase letters, digits and '-', starting and ending with a letter or digit, 63 at most")
    return name


def _check_stack(plan: Plan) -> None:
    if not openmpi_version(plan):
        raise ExportError(f"stack {plan.resolved.name} has no Open MPI: an MPIJob launches its command with mpirun",
                          hint="export a stack with openmpi (e.g. chainermn)")
    if plan.resolved.get("openssh") is None:
        raise ExportError(f"stack {plan.resolved.name} has no OpenSSH: MPIJob workers are reached over ssh",
                          hint="add the openssh component to the stack")


def _launcher_command(plan: Plan, ranks: int, words: list) -> list:
    """mpirun over ssh to the workers, passing PATH and the stack's environment on."""
    exports = []
    for var in ["PATH", *stack_env(plan)]:
        exports += ["-x", var]
    return ["mpirun", "-np", str(ranks), "--mca", "plm_rsh_args", _RSH_ARGS, *exports, *words]


def _document(plan: Plan, name: str, image: str, *, workers: int, slots: int, gpus: int, shm_size: str,
              launcher_command: list) -> dict:
    """The MPIJob as Python data: labels, the launcher and worker pods, shared memory."""
    hash16 = plan.content_hash[:TAG_CHARS]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "dlenv",
              f"{K8S_LABEL_PREFIX}stack": plan.resolved.name, f"{K8S_LABEL_PREFIX}content-hash": hash16}
    annotations = {f"{K8S_LABEL_PREFIX}content-hash": plan.content_hash, f"{K8S_LABEL_PREFIX}image": image}
    pod_security = {"runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID, "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"}}
    container_security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    def pod(role: str, container: dict, volumes: list | None = None) -> dict:
        spec: dict = {"securityContext": pod_security, "containers": [container]}
        if volumes:
            spec["volumes"] = volumes
        return {"metadata": {"labels": {**labels, f"{K8S_LABEL_PREFIX}role": role}, "annotations": annotations},
                "spec": spec}

    launcher = {"name": "launcher", "image": image, "imagePullPolicy": "IfNotPresent",
                "workingDir": WORKDIR, "command": launcher_command, "securityContext": container_security}
    worker = {"name": "worker", "image": image, "imagePullPolicy": "IfNotPresent", "workingDir": WORKDIR,
              "command": list(_SSHD), "ports": [{"name": "ssh", "containerPort": SSH_PORT}],
              "securityContext": container_security,
              "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if gpus:
        worker["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s_quantity(shm_size)}}
    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": {"cleanPodPolicy": "Running"},
            "sshAuthMountPath": SSH_AUTH_PATH,
            "mpiImplementation": "OpenMPI",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "template": pod("launcher", launcher)},
                "Worker": {"replicas": workers, "template": pod("worker", worker, [shm])},
            },
        },
    }
