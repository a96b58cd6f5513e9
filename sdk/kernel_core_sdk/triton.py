"""Triton kernels in a plugin: whether one can run here (for its ``unavailable_reason()``), and
its tests' conftest on a machine without a GPU.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, that is when the
plugin's kernel module is first imported (and Triton's own helpers when ``triton`` is): it then
makes an interpreted function, which runs on CPU tensors, instead of a compiled one; it reads it
again at the first launch. So without a GPU a kernel runs only when the variable was set before
that import. This module imports neither torch, triton nor pytest: the engine asks on machines
that have neither a GPU nor triton, and the conftest must set the variable before anything
imports triton (transformers and torch._dynamo do).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Values of ``TRITON_INTERPRET`` that Triton reads as set (its ``getenv_bool``).
_TRUE = {"1", "true", "on"}


def triton_interpret_requested() -> bool:
    """``TRITON_INTERPRET`` is set as Triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def gpu_present() -> bool:
    """A CUDA (or ROCm, which torch also calls cuda) or XPU device is visible to torch."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or (xpu is not None and xpu.is_available())


def triton_unavailable_reason(kernel_module: str) -> str | None:
    """None on a CUDA/ROCm/XPU machine with triton, or without a GPU when ``TRITON_INTERPRET`` is
    set and ``kernel_module`` (whose ``INTERPRETED`` says how its kernels were decorated) is not
    yet imported or was imported interpreted; else why not, for the engine's refusal."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; ROCm and XPU torch builds bring their own)"
    if gpu_present():
        return None
    if not triton_interpret_requested():
        return (
            "no CUDA, ROCm or XPU GPU, and TRITON_INTERPRET is not set (TRITON_INTERPRET=1 runs the "
            "kernel in Triton's interpreter on CPU tensors, for tests: slow)"
        )
    kernels = sys.modules.get(kernel_module)
    if kernels is not None and not kernels.INTERPRETED:
        return f"TRITON_INTERPRET was set after {kernel_module} was imported: its kernel is compiled for a GPU"
    return None


def interpret_triton_on_cpu(*kernel_modules: str) -> Callable[..., Any]:
    """Without a GPU, import ``kernel_modules`` afresh under ``TRITON_INTERPRET=1`` and return an
    autouse fixture setting the variable during each test, so that the rest of a run never sees it.
    Call it in the plugin's ``tests/conftest.py`` (pytest imports it before the test modules beside
    it) and assign the fixture to a name there."""
    import pytest

    interpret = not gpu_present()
    if interpret:
        # Modules of the plugins imported earlier in the run (compiled) would be kept: import afresh.
        packages = tuple(module.split(".")[0] + "." for module in kernel_modules)
        for name in [m for m in sys.modules if m.startswith(packages)]:
            del sys.modules[name]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TRITON_INTERPRET", "1")
            for module in kernel_modules:
                importlib.import_module(module)

    @pytest.fixture(autouse=True, name="triton_interpreter")
    def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """``TRITON_INTERPRET=1`` during each test here, when there is no GPU."""
        if interpret:
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        yield

    return triton_interpreter
