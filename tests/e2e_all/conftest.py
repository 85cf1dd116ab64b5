"""Engine tests share one package store (tests/engine_store.py)."""

from engine_store import _shared_package_store  # noqa: F401 - an autouse fixture
