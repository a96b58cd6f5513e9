"""Fixtures of the MoE model plugin's tests (the core's tests/conftest.py does not reach plugins/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The converted embedded SmolLM2 in ``$KERNEL_CORE_CACHE``, whose tokenizer the engine tests use."""
    from kernel_core.models.embedded import embedded_model_path

    return embedded_model_path()
