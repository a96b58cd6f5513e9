"""These tests run the kernel compiled on a CUDA GPU when the machine has one
(``scripts/gpu_check.sh``), else in Triton's interpreter on CPU tensors.

When Triton reads ``TRITON_INTERPRET`` (triton 3.9):

- at decoration: ``triton.jit`` returns an ``InterpretedFunction`` instead of a ``JITFunction``
  (``triton/runtime/jit.py``). So the mode of our kernel is fixed when
  ``kernel_core_moe_triton.kernels`` is first imported, and that of Triton's own
  ``triton.language`` helpers when ``triton`` is;
- at the first launch: Triton then imports its gluon modules, which assert that the variable
  is set for the interpreted helpers they wrap.

So this conftest, imported by pytest before the test modules beside it, imports the kernels with
the variable set, and an autouse fixture sets it again for each test of this folder only:
the rest of a run never sees it (no other test launches Triton). A subprocess per test would
isolate as well, but pay torch's and triton's imports, seconds, every time.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
import torch

INTERPRET = not torch.cuda.is_available()

if INTERPRET:
    # Modules of the plugin imported earlier in the run (compiled) would be kept: import afresh.
    for name in [m for m in sys.modules if m.startswith("kernel_core_moe_triton.")]:
        del sys.modules[name]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        importlib.import_module("kernel_core_moe_triton.moe")


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``TRITON_INTERPRET=1`` during each test here, when there is no GPU."""
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
