"""Fixtures of the Llama plugin's tests (the core's tests/conftest.py does not reach plugins/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_core.contracts.platform import LinearPolicy
from kernel_core.modeling.gemm import install_linear_policy


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The converted embedded SmolLM2 in ``$KERNEL_CORE_CACHE`` (converted there when missing)."""
    from kernel_core.models.embedded import embedded_model_path

    return embedded_model_path()


@pytest.fixture(autouse=True)
def default_linear_policy() -> Iterator[None]:
    """The core's default GEMM (``F.linear``, the one HF runs) for every test here, whatever policy
    an engine built earlier in the process installed: these tests hold the model's arithmetic to
    HF's logits within 1e-4, which a GEMM summing in another order (the CPU policy's oneDNN, whose
    accuracy kernel-core-platform-cpu's tests bound) may exceed on SmolLM2's 49152-row ``lm_head``
    (1.1e-4 in one CI run). The engine under the CPU policy is held to HF's tokens by
    tests/engine/test_oracle.py."""
    previous = install_linear_policy(LinearPolicy())
    yield
    install_linear_policy(previous)
