"""Fixtures of the MoE model plugin's tests (the core's tests/conftest.py does not reach plugins/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# moe_oracle.py, the helpers the test modules share: importable under the repository's
# --import-mode=importlib (which puts no test folder on sys.path) as under this folder's own run.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The converted embedded SmolLM2 in ``$KERNEL_CORE_CACHE``, whose tokenizer the engine tests use."""
    from kernel_core.models.embedded import embedded_model_path

    return embedded_model_path()
