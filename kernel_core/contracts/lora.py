"""The contract a LoRA kernel plugin implements: batched, unmerged LoRA for serving.

Every token of a step may use a different adapter (or none). The engine keeps the active
adapters in numbered slots, stacked per projection: ``lora_a`` is ``[slots, R, in]`` and
``lora_b`` ``[slots, out, R]`` with the adapter's scaling folded into ``lora_b`` and ranks below
``R`` zero-padded, so a kernel needs no per-adapter metadata. The kernel adds
``(x @ A[s].T) @ B[s].T`` to the projection's output for each token's slot ``s``: Punica's
"shrink" and "expand". Platforms and plugins register faster kernels for their devices through
``kernel_core_lora_kernels``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from kernel_core.contracts.adapter_targets import ProjectionHook, ProjectionTarget
from kernel_core.contracts.serving import NO_SLOT, SlotBatch

#: The LoRA kernel's name for the serving seam's :class:`SlotBatch` (kept for kernel plugins).
LoRABatch = SlotBatch
__all__ = ["NO_SLOT", "LoRABatch", "LoRAKernel", "LoRAProjection", "LoRAStep", "LoRATarget", "SlotBatch"]


class LoRAKernel(ABC):
    """Adds each token's adapter update to a projection's output, in place."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this kernel cannot run on this machine (say, Triton without a GPU and without
        ``TRITON_INTERPRET=1``), or None when it can (plugin API 1.6). One that cannot is listed
        but never selected by priority or as a platform's default; one named by the setting is
        refused with this reason."""
        return None

    @abstractmethod
    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        """``output[t] += (x[t] @ lora_a[s].T) @ lora_b[s].T`` for every token ``t`` whose slot
        ``s = batch.token_slots[t]`` is not :data:`NO_SLOT`; other rows are left untouched.

        ``output`` is ``[T, out]``, ``x`` ``[T, in]``, ``lora_a`` ``[slots, R, in]``, ``lora_b``
        ``[slots, out, R]``, all of the model's dtype and device. Called under
        ``torch.inference_mode()``.
        """


@dataclass(eq=False)
class LoRAStep:
    """The current step's :class:`LoRABatch`, shared by every projection; the runner sets it
    before a forward and clears it after."""

    batch: LoRABatch | None = None


@dataclass(eq=False)
class LoRAProjection(ProjectionHook):
    """One projection's adapter slots (``lora_a [slots, R, in]``, ``lora_b [slots, out, R]``)
    and the kernel that applies them: the hook LoRA's serving adds to a projection target."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    kernel: LoRAKernel
    step: LoRAStep

    def after(self, output: torch.Tensor, x: torch.Tensor) -> None:
        batch = self.step.batch
        if batch is not None and not batch.empty:
            self.kernel.apply(output, x, self.lora_a, self.lora_b, batch)


#: A projection LoRA may adapt: any :class:`~kernel_core.contracts.adapter_targets.ProjectionTarget`
#: (the name kept from plugin API 1.4).
LoRATarget = ProjectionTarget
