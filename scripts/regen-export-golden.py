"""Regenerate tests/golden/exports/* (run on purpose: `python scripts/regen-export-golden.py`).

Every export names the image by the stack's content hash, so these files change whenever the
hash of `chainermn` or `python` changes (any change to their Dockerfile, generated files, versions
or base recipe), not only when an export template changes. A golden file changes only in a commit
of its own whose message explains the rendered difference.

tests/unit/test_exports.py loads CASES from this file, so the test and the regeneration can never
disagree about which options produced a golden file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "exports"
sys.path.insert(0, str(ROOT))

REGISTRY = "registry.example.org:5000/team"
COMMAND = ["python", "train.py", "--epochs", "5", "--out", "result dir"]


def _plan(stack: str):
    from builder.plan.plan import plan
    return plan(stack)


def _cases() -> dict:
    from builder.outputs.exports.apptainer import apptainer_def
    from builder.outputs.exports.devcontainer import devcontainer
    from builder.outputs.exports.mpijob import mpijob
    from builder.outputs.exports.slurm import slurm_script
    return {
        "chainermn.apptainer.def": lambda: apptainer_def(_plan("chainermn")),
        "chainermn.apptainer-registry.def": lambda: apptainer_def(_plan("chainermn"), REGISTRY),
        "chainermn.slurm-apptainer.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=4, time_limit="01:00:00", partition="gpu"),
        "chainermn.slurm-apptainer-hybrid.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=4, mpi_mode="hybrid", registry=REGISTRY),
        "chainermn.slurm-pyxis.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=4, gpus_per_node=8, ntasks_per_node=8, time_limit="1-00:00:00",
            runtime="pyxis", registry=REGISTRY),
        "chainermn.slurm-native.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=4, time_limit="01:00:00", runtime="native"),
        "chainermn.slurm-charliecloud.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=0, ntasks_per_node=2, runtime="charliecloud"),
        "chainermn.slurm-podman.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=0, runtime="podman", time_limit="00:30:00"),
        "chainermn.slurm-podman-registry.sbatch": lambda: slurm_script(
            _plan("chainermn"), COMMAND, nodes=2, gpus_per_node=4, runtime="podman", registry=REGISTRY),
        "chainermn.mpijob.yaml": lambda: mpijob(
            _plan("chainermn"), COMMAND, registry=REGISTRY, workers=2, gpus_per_worker=4, shm_size="8g"),
        "chainermn.devcontainer.json": lambda: devcontainer(_plan("chainermn"), shm_size="8g"),
        "python.devcontainer.json": lambda: devcontainer(_plan("python"), shm_size="8g"),
    }


CASES = _cases()


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, make in CASES.items():
        target = GOLDEN / name
        text = make()
        changed = not target.exists() or target.read_text() != text
        target.write_text(text)
        print(f"{'updated' if changed else 'unchanged'} {target.relative_to(ROOT)}")
    for stale in sorted(set(p.name for p in GOLDEN.iterdir()) - set(CASES)):
        print(f"stale (not an export case any more, remove it): {(GOLDEN / stale).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
