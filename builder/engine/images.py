"""A stack's images in the engine: the promoted image of a plan (its hash tag, with the content-hash
label that promotion set), found or explained; and what a command's TARGET (a stack or an image
reference) means as an image."""

from __future__ import annotations

import dataclasses
import os

from builder import paths
from builder.engine import dockerapi as engine
from builder.errors import EngineError
from builder.names import HASH_LABEL, LOCK_LABEL, STACK_LABEL
from builder.plan.plan import Plan, plan
from builder.spec.stack import catalog_stack_names


def promoted_image(client, p: Plan) -> dict | None:
    attrs = engine.image_attrs(client, p.hash_tag)
    if attrs and engine.image_labels(attrs).get(HASH_LABEL) == p.content_hash:
        return attrs
    return None


def require_promoted(client, p: Plan, ref: str | None = None) -> dict:
    """The promoted image of `p` (its attrs), or an EngineError telling how to build it."""
    attrs = promoted_image(client, p)
    if attrs is None:
        raise EngineError(f"{p.hash_tag} does not exist",
                          hint=f"build it with `dlenv build {ref or p.resolved.name}`")
    return attrs


def is_image_ref(target: str) -> bool:
    """`repo:tag` or `repo/name` that is not a stack file: an image reference."""
    if target.endswith((".yaml", ".yml")) or os.path.exists(target):
        return False
    return ":" in target or "/" in target


def image_for(client, target: str) -> str:
    """TARGET as an image: an image reference (`repo:tag`, `repo/name`, an id) is used as given;
    a stack name or stack file means the promoted image of its current content hash."""
    stack_like = (not is_image_ref(target)) and (
        target in catalog_stack_names(paths.stacks_dir()) or target.endswith((".yaml", ".yml"))
        or os.path.exists(target) or engine.image_attrs(client, target) is None)
    if stack_like:
        p = plan(target)
        require_promoted(client, p, target)
        return p.hash_tag
    if engine.image_attrs(client, target) is None:
        raise EngineError(f"image {target} not found", hint="build it with `dlenv build STACK` or pull it")
    return target


def verify_target(client, target: str) -> tuple[Plan, str, dict]:
    """(plan, image, component versions) of what `dlenv verify TARGET` checks: a stack's promoted image,
    or an image reference planned from the stack its label names (with no lock check when the image
    was built from another lock than the stack's current one)."""
    if not is_image_ref(target):
        p = plan(target)
        require_promoted(client, p, target)
        return p, p.hash_tag, p.resolved.versions()
    attrs = engine.image_attrs(client, target)
    if attrs is None:
        raise EngineError(f"image {target} not found")
    labels = engine.image_labels(attrs)
    stack = labels.get(STACK_LABEL)
    if not stack:
        raise EngineError(f"image {target} was not built by dlenv (no {STACK_LABEL} label)")
    p = plan(stack)
    if p.lock is not None and labels.get(LOCK_LABEL) != p.lock.digest:
        p = dataclasses.replace(p, lock_state="other")  # built from another lock: no lock check
    return p, target, labels
