"""The build context on disk: the rendered Dockerfile, the generated and copied files, and the CA
bundle (build stage only), written into a temporary folder an engine builds from."""

from __future__ import annotations

from pathlib import Path

from builder.names import CA_BUNDLE_PATH
from builder.plan.render import BuildContext


def write_context(ctx: BuildContext, directory: Path, ca_bundle: bytes | None, dockerfile: str | None = None) -> None:
    """The build context on disk; `ca_bundle` None (BuildKit: a secret mount) writes no bundle at all."""
    (directory / "Dockerfile").write_text(ctx.dockerfile if dockerfile is None else dockerfile)
    for rel, data in ctx.files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(ctx.modes.get(rel, 0o644))
    if ca_bundle is None:
        return
    ca = directory / CA_BUNDLE_PATH
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(ca_bundle)
