"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _torch_threads() -> int:
    """Torch threads per test process: the cores shared out between the xdist workers (``pytest -n N``), at least 1.

    Two workers with two threads each on a 2-core machine oversubscribe it, and OpenMP threads that spin-wait for
    each other then slow every training test down several times over.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(workers, 1))


def pytest_configure(config) -> None:
    # before any fixture: module-scoped fixtures that train a model run ahead of the per-test fixture below
    torch.set_num_threads(_torch_threads())


@pytest.fixture(autouse=True)
def _threads():
    """Every test starts with the same torch thread count (a test or the code under test may change it)."""
    torch.set_num_threads(_torch_threads())
    yield


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder ``../shared/data`` beside the project; skips the test when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the project")
    return path


@pytest.fixture
def standin_models():
    """Registers the stand-in models of ``tests/standins.py`` for one test, and removes them afterwards."""
    from standins import STANDINS

    from glasszoo.models import register_model, unregister_model

    for name, (cls, family) in STANDINS.items():
        register_model(name, family=family, paper="test stand-in")(cls)
    yield STANDINS
    for name in STANDINS:
        unregister_model(name)


@pytest.fixture(autouse=True)
def _registry_unchanged():
    """No test leaves an entry in the model registry (or takes one away)."""
    from glasszoo.models import list_models

    before = list_models()
    yield
    after = list_models()
    assert after == before, f"the test changed the model registry: {sorted(set(after) ^ set(before))}"
