"""Engine tests share one package store (tests/engine_store.py); the chainermn image is used, never built."""

import os

import pytest

from builder.engine.images import promoted_image
from builder.plan.plan import plan
from engine_store import _shared_package_store  # noqa: F401 - an autouse fixture


@pytest.fixture(scope="session")
def chainermn_image(docker_client) -> str:
    """The promoted chainermn image (the one catalog stack with MPI and ssh), read-only: tests/e2e builds it."""
    p = plan("chainermn")
    if promoted_image(docker_client, p) is None:
        message = f"needs the promoted chainermn image {p.hash_tag} (tests/e2e builds it: run it first)"
        if os.environ.get("DLENV_REQUIRE_ENGINE") == "1":
            pytest.fail(message, pytrace=False)     # CI: a missing image is a failure, never a skip
        pytest.skip(message)
    return p.hash_tag
