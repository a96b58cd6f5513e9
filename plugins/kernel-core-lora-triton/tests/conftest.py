"""These tests run the kernels compiled on a GPU when the machine has one (``scripts/gpu_check.sh``),
else in Triton's interpreter on CPU tensors.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel (so the mode of ours is
fixed when ``kernel_core_lora_triton.ops`` is first imported, that of Triton's own helpers when
``triton`` is) and again at the first launch. So this conftest, imported by pytest before the test
modules beside it, imports the kernels with the variable set, and an autouse fixture sets it again
for each test of this folder only: the rest of a run never sees it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
import torch

INTERPRET = not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()))

if INTERPRET:
    # Modules of the plugin imported earlier in the run (compiled) would be kept: import afresh.
    for name in [m for m in sys.modules if m.startswith("kernel_core_lora_triton.")]:
        del sys.modules[name]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        importlib.import_module("kernel_core_lora_triton.ops")


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``TRITON_INTERPRET=1`` during each test here, when there is no GPU."""
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
