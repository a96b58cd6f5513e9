"""The contract a mixture-of-experts kernel plugin implements.

Expert weights arrive stacked, one slice per expert, either in the activations' dtype or as int8
weight-only quantized tensors with per-expert, per-output-channel scales (``moe_quantization``
"int8"). A kernel lists the quantizations it consumes in its :class:`MoEKernelSpec` record, so
that selection never hands it weights it cannot read. A kernel may also turn a layer's experts, once
at load, into a form of its own (:meth:`MoEKernel.prepare`): GEMM weights pre-packed for the CPU's
library, another layout for a device kernel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PreparedExperts:
    """A kernel's own form of one layer's experts, made once at load by :meth:`MoEKernel.prepare`."""

    #: What :meth:`MoEKernel.forward` receives as ``prepared`` on every call of that layer.
    state: Any
    #: Whether ``forward`` still reads the stacked weight tensors (and scales). When False the layer
    #: keeps only their shapes and dtypes (``meta`` tensors, still passed to ``forward``) and frees
    #: their memory, so that a kernel holding re-packed weights does not hold two copies.
    reads_stacked: bool = True


class MoEKernel(ABC):
    """Routes each token to its top-k experts (SwiGLU MLPs) and sums their weighted outputs."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this kernel cannot run on this machine (say, Triton without a GPU and without
        ``TRITON_INTERPRET=1``), or None when it can (plugin API 1.6). One that cannot is listed
        but never selected by priority or as a platform's default; one named by the setting is
        refused with this reason."""
        return None

    @abstractmethod
    def forward(
        self,
        hidden: torch.Tensor,
        router_logits: torch.Tensor,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        top_k: int,
        renormalize: bool = True,
        *,
        w_gate_up_scale: torch.Tensor | None = None,
        w_down_scale: torch.Tensor | None = None,
        prepared: Any = None,
    ) -> torch.Tensor:
        """Return ``[T, H]`` in ``hidden``'s dtype.

        ``hidden`` is ``[T, H]``; ``router_logits`` ``[T, E]``; ``w_gate_up`` ``[E, 2 * I, H]``
        (gate rows then up rows); ``w_down`` ``[E, H, I]``. Routing weights are the softmax of
        the logits over all experts, kept for the top-k, renormalised to sum to one when
        ``renormalize`` (ties between equal logits go to the lower expert index, as
        ``torch.topk`` breaks them). Expert ``e`` computes
        ``down_e(silu(gate_e(x)) * up_e(x))``.

        With the scales given (plugin API 1.3), ``w_gate_up`` and ``w_down`` are int8 and the
        real weights are ``w.float() * scale[..., None]``: ``w_gate_up_scale`` is ``[E, 2 * I]``
        and ``w_down_scale`` ``[E, H]``, float32, one scale per expert and output channel. Only
        kernels whose record lists ``"int8"`` in ``quantizations`` receive them.

        ``prepared`` is the ``state`` of what :meth:`prepare` returned for these weights, passed
        only when it returned one (plugin API 1.4): a kernel that never overrides ``prepare``
        never receives it.
        """

    def prepare(
        self,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        *,
        w_gate_up_scale: torch.Tensor | None = None,
        w_down_scale: torch.Tensor | None = None,
    ) -> PreparedExperts | None:
        """Called once per MoE layer after its experts are loaded (and quantized), with the
        tensors :meth:`forward` receives: return a form of them this kernel computes faster from
        (e.g. each expert's GEMM weights in a GEMM library's packed form), or None to keep only the stacked
        tensors (the default). Since plugin API 1.4 (additive)."""
        return None


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight-only quantization of stacked expert weights ``[E, out, in]``.

    Returns the int8 weights and float32 scales ``[E, out]`` (``max |w| / 127`` per expert and
    output channel, 1 for an all-zero row), so that ``q.float() * scale[..., None]`` is within
    half a step of ``weight``.
    """
    absmax = weight.detach().abs().amax(dim=-1).float()
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    quantized = torch.round(weight.float() / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return quantized, scale


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The real weights ``[..., out, in]`` in ``dtype`` from int8 ones and their scales ``[..., out]``."""
    return (weight.float() * scale[..., None]).to(dtype)
