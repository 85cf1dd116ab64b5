"""The VS Code export: .devcontainer/devcontainer.json pinned to the image of one content hash,
with the shared memory and ulimits that `dlenv run` gives its containers. Pure: returns text.
"""

from __future__ import annotations

import json

from builder.names import RUNTIME_USER, TAG_CHARS, ULIMITS, WORKDIR
from builder.outputs.exports.common import has_cuda, local_ref, registry_ref, shm_bytes
from builder.plan.plan import Plan

DEVCONTAINER_EXTENSIONS = ("ms-python.python",)


def devcontainer_run_args(shm_size: str = "8g") -> list:
    shm_bytes(shm_size)  # validated
    args = [f"--shm-size={shm_size}"]
    for limit, soft, hard in ULIMITS:
        args += ["--ulimit", f"{limit}={soft}" if soft == hard else f"{limit}={soft}:{hard}"]
    return args + ["--init"]


def devcontainer(plan: Plan, *, registry: str | None = None, shm_size: str = "8g") -> str:
    """.devcontainer/devcontainer.json pinned to the image of this content hash."""
    doc: dict = {
        "name": f"dlenv {plan.resolved.name} ({plan.content_hash[:TAG_CHARS]})",
        "image": registry_ref(plan, registry) if registry else local_ref(plan),
        "remoteUser": RUNTIME_USER,
        "workspaceMount": f"source=${{localWorkspaceFolder}},target={WORKDIR},type=bind",
        "workspaceFolder": WORKDIR,
        "runArgs": devcontainer_run_args(shm_size),
    }
    if has_cuda(plan):
        doc["hostRequirements"] = {"gpu": "optional"}
    doc["customizations"] = {"vscode": {"extensions": list(DEVCONTAINER_EXTENSIONS)}}
    return json.dumps(doc, indent=2) + "\n"
