"""The contract a mixture-of-experts kernel plugin implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class MoEKernel(ABC):
    """Routes each token to its top-k experts (SwiGLU MLPs) and sums their weighted outputs."""

    @abstractmethod
    def forward(
        self,
        hidden: torch.Tensor,
        router_logits: torch.Tensor,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        top_k: int,
        renormalize: bool = True,
    ) -> torch.Tensor:
        """Return ``[T, H]``.

        ``hidden`` is ``[T, H]``; ``router_logits`` ``[T, E]``; ``w_gate_up`` ``[E, 2 * I, H]``
        (gate rows then up rows); ``w_down`` ``[E, H, I]``. Routing weights are the softmax of
        the logits over the chosen top-k, renormalised to sum to one when ``renormalize``.
        """
