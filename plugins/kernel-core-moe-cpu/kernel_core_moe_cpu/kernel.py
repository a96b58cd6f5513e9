"""The CPU MoE kernel: the torch kernel's routing and grouping, int8 experts through a compiled GEMM.

int8 experts are packed once at load (:meth:`CPUMoE.prepare`) into the GEMM's panels, replacing the
stacked tensors (same bytes), and each expert's slice of rows is multiplied by ``int8_gemm.cpp``: the
int8 weights converted in registers inside the micro-kernel, so they are read as int8 (a quarter of
float32's bytes, half of bfloat16's) and multiplied at the FMA rate of the activations' dtype. Where
the torch kernel writes activations as integer digits (several int8 GEMMs) or converts each expert's
weights into a scratch copy, this one computes from the activations and weights themselves, in one
pass; docs/benchmarks.md has it beside oneDNN's GEMMs on packed full-precision weights. Full-precision
experts take the torch kernel's path unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernel_core.contracts.moe import PreparedExperts
from kernel_core_moe_cpu import library as gemm_library
from kernel_core_moe_cpu.library import GEMMS
from kernel_core_moe_torch.kernel import PackedExperts, TorchMoE

#: Activation dtypes the compiled GEMM reads and writes; others are computed in float32 and converted.
NATIVE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class Int8Panels:
    """One expert projection's int8 weights ``[out, in]`` in the GEMM's panels, with their scales."""

    packed: torch.Tensor
    scale: torch.Tensor
    out_features: int
    in_features: int

    @classmethod
    def pack(cls, weight: torch.Tensor, scale: torch.Tensor) -> Int8Panels:
        """``weight`` ``[out, in]`` int8 (rows contiguous), ``scale`` ``[out]``: packed once."""
        handle = gemm_library.library().handle
        rows, columns = weight.shape
        packed = torch.empty(handle.kc_int8_packed_bytes(rows, columns), dtype=torch.int8)
        handle.kc_int8_pack(weight.data_ptr(), rows, columns, weight.stride(0), packed.data_ptr(), torch.get_num_threads())
        return cls(packed, scale.float().contiguous(), rows, columns)

    def multiply(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out = x @ (weight * scale[:, None]).T``; ``x`` ``[M, in]`` and ``out`` ``[M, out]`` with
        unit column strides, both in one dtype."""
        if x.dtype not in NATIVE_DTYPES:
            out.copy_(self.multiply_float32(x.float()))
            return
        if x.stride(1) != 1:
            x = x.contiguous()
        target = out if out.stride(1) == 1 else torch.empty(out.shape, dtype=out.dtype)
        gemm = getattr(gemm_library.library().handle, GEMMS[NATIVE_DTYPES[x.dtype]])
        gemm(
            x.data_ptr(), x.shape[0], self.in_features, x.stride(0), self.packed.data_ptr(), self.out_features,
            self.scale.data_ptr(), target.data_ptr(), target.stride(0), torch.get_num_threads(),
        )
        if target is not out:
            out.copy_(target)

    def multiply_float32(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.out_features)
        self.multiply(x, out)
        return out


class CPUMoE(TorchMoE):
    """The torch kernel, with int8 CPU experts packed for and multiplied by the compiled GEMM."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the GEMM did not build or load here (no C++ compiler, or it failed); None when it did.
        Without AVX-512 it builds its plain-loop path, so it runs on every CPU with a compiler."""
        error = gemm_library.library().error
        return None if error is None else f"the int8 GEMM is not available: {error}"

    def prepare(
        self,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        *,
        w_gate_up_scale: torch.Tensor | None = None,
        w_down_scale: torch.Tensor | None = None,
    ) -> PreparedExperts | None:
        """int8 CPU experts: each expert's projections in panels with their scales, replacing the
        stacked tensors (``reads_stacked=False``); others as the torch kernel prepares them."""
        if w_gate_up_scale is None or w_down_scale is None or w_gate_up.device.type != "cpu":
            return super().prepare(w_gate_up, w_down, w_gate_up_scale=w_gate_up_scale, w_down_scale=w_down_scale)
        panels = PackedExperts(
            [Int8Panels.pack(w, s) for w, s in zip(w_gate_up, w_gate_up_scale)],
            [Int8Panels.pack(w, s) for w, s in zip(w_down, w_down_scale)],
        )
        return PreparedExperts(panels, reads_stacked=False)

    def project(
        self, x: torch.Tensor, weight: Any, scale: torch.Tensor | None, out: torch.Tensor, scratch: torch.Tensor | None
    ) -> None:
        if isinstance(weight, Int8Panels):
            weight.multiply(x, out)
        else:
            super().project(x, weight, scale, out, scratch)
