"""The Apptainer export: a definition file that bootstraps from the stack's promoted image (in
the local engine or a registry) and whose `%test` imports what the stack's own cheap checks import.
Pure: returns text.
"""

from __future__ import annotations

import ast
import shlex

from builder.names import HASH_LABEL, RUNTIME_USER, STACK_LABEL, TAG_CHARS, WORKDIR
from builder.outputs.exports.common import artifact_name, local_ref, registry_ref, render, stack_env
from builder.plan.plan import Plan


def test_modules(plan: Plan) -> list:
    """Top-level modules the stack's own cheap Python checks import (no GPU, no ranks, no root):
    importing them is the Apptainer `%test`."""
    modules: list = []
    for chk in plan.resolved.checks:
        if chk.kind != "python" or chk.device or chk.ranks or chk.as_root:
            continue
        try:
            tree = ast.parse(chk.target)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in modules:
                    modules.append(top)
    return modules


def _env_lines(plan: Plan) -> list:
    env_lines = [f"export PATH={shlex.quote(plan.resolved.path)}"]
    ld_paths = plan.resolved.ld_paths
    if ld_paths:
        # Apptainer appends /.singularity.d/libs (the host driver with --nv) after this in 99-base.sh;
        # keep whatever is already set.
        env_lines.append(f"export LD_LIBRARY_PATH={shlex.quote(':'.join(ld_paths))}"
                         '"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"')
    env_lines += [f"export {key}={shlex.quote(value)}" for key, value in stack_env(plan).items()]
    return env_lines


def _test_command(plan: Plan) -> str:
    modules = test_modules(plan)
    if modules:
        return f"python -c {shlex.quote('import ' + ', '.join(modules))}"
    if plan.resolved.get("python") is not None:
        return "python --version"
    return "true"


def apptainer_def(plan: Plan, registry: str | None = None) -> str:
    """An Apptainer definition file: from the local engine (`docker-daemon`) or the registry."""
    if registry:
        bootstrap, source = "docker", registry_ref(plan, registry)
    else:
        bootstrap, source = "docker-daemon", local_ref(plan)
    env_lines = _env_lines(plan)
    test = _test_command(plan)
    return render(
        "apptainer.def.j2",
        stack=plan.resolved.name, content_hash=plan.content_hash, hash16=plan.content_hash[:TAG_CHARS],
        bootstrap=bootstrap, source=source, registry=registry or "",
        sif=artifact_name(plan, ".sif"), def_name=f"dlenv-{plan.resolved.name}.def",
        env_lines=env_lines, labels=[(HASH_LABEL, plan.content_hash), (STACK_LABEL, plan.resolved.name)],
        test=test, workdir=WORKDIR, user=RUNTIME_USER,
    )
