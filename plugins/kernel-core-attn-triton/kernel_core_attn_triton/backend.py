"""The Triton attention backend: the step's keys and values written by torch index ops, then one
Triton kernel launch (:mod:`kernel_core_attn_triton.kernels`) for every query row of the step.

This module imports neither triton nor the kernel at import time: the engine imports it to ask
:meth:`TritonAttention.unavailable_reason` on machines where triton is absent or no GPU is, and
the kernel's mode (compiled or interpreted) is fixed by ``TRITON_INTERPRET`` when the kernel
module is first imported (see its docstring), which should be the caller's choice.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Annotated, ClassVar

import torch
from pydantic import AfterValidator, Field

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.settings import PluginSettings
from kernel_core_attn_triton.plugin import DTYPES, MAX_HEAD_SIZE
from kernel_core_sdk.triton import triton_unavailable_reason

#: Query (and cache) dtypes the kernel takes, as its record declares them.
SUPPORTED_DTYPES = tuple(getattr(torch, name) for name in sorted(DTYPES))
_KERNELS = "kernel_core_attn_triton.kernels"
def _kernels() -> ModuleType:
    """The kernel module, imported on first use (in the mode ``TRITON_INTERPRET`` then selects)."""
    return sys.modules.get(_KERNELS) or importlib.import_module(_KERNELS)


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"{value} is not a power of two")
    return value


#: ``tl.arange`` takes powers of two and ``tl.dot`` at least 16 in every dimension.
Tile = Annotated[int, Field(ge=16), AfterValidator(_power_of_two)]


class TritonAttentionSettings(PluginSettings):
    """``--plugin-option attention-backend.triton.KEY=VALUE``: the kernel's launch configuration
    (untuned defaults, the shape of vLLM's unified attention launch)."""

    block_m: Tile = Field(
        16, description="Rows per program: query tokens x the query heads of one KV head (raised to the group size)."
    )
    block_n: Tile = Field(32, description="Context positions per loop step, independent of the cache's block size.")
    num_warps: Annotated[int, Field(ge=1), AfterValidator(_power_of_two)] = Field(
        4, description="Warps per program on a GPU."
    )


class TritonAttention(AttentionBackend):
    """vLLM's unified Triton attention design: prefill rows (causal), chunked-prefill rows and decode
    rows of all requests in one kernel launch per layer, reading the paged cache in place through
    the block tables; GQA heads of one KV head share each key/value tile; sliding windows.

    Tile sizes: :class:`TritonAttentionSettings`.
    """

    supports_sliding_window = True
    Settings: ClassVar[type[PluginSettings]] = TritonAttentionSettings

    def __init__(self, settings: TritonAttentionSettings | None = None) -> None:
        self.settings = settings or TritonAttentionSettings()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None on a CUDA/ROCm/XPU machine with triton, or without a GPU when ``TRITON_INTERPRET``
        is set (the kernel then runs in Triton's interpreter on CPU tensors: tests); else why not."""
        return triton_unavailable_reason(_KERNELS)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        kernels = _kernels()
        check_inputs(query, key, value, kv_cache, metadata, kernels.INTERPRETED)
        # The write is a row scatter, memory-bound and tiny next to the attention: torch's
        # index_copy_ (one kernel per tensor on any device) rather than a second Triton kernel.
        slots = kv_cache.view(2, -1, *kv_cache.shape[3:])
        slots[0].index_copy_(0, metadata.slot_mapping, key)
        slots[1].index_copy_(0, metadata.slot_mapping, value)
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        kernels.paged_attention(
            query,
            kv_cache,
            metadata.block_tables,
            metadata.seq_lens,
            metadata.query_start_loc,
            metadata.scale,
            metadata.sliding_window,
            out,
            kernels.Tiles(self.settings.block_m, self.settings.block_n, self.settings.num_warps),
        )
        return out


def check_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    interpreted: bool,
) -> None:
    """Refuse, naming the field, what the kernel would misread: a cache layout other than
    ``(2, blocks, block_size, kv_heads, head_size)`` or not contiguous, dtypes that differ or
    that the kernel lacks, head sizes over :data:`MAX_HEAD_SIZE`, heads that do not group, tensors
    on other devices, a window under 1, or CPU tensors outside Triton's interpreter."""
    if query.dim() != 3:
        raise ValueError(f"query has shape {tuple(query.shape)}, expected [tokens, num_heads, head_size]")
    num_tokens, num_heads, head_size = query.shape
    if query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"query dtype {query.dtype} is not supported by the Triton kernel: {list(SUPPORTED_DTYPES)}")
    if head_size > MAX_HEAD_SIZE:
        raise ValueError(f"head_size {head_size} is not supported by the Triton kernel: at most {MAX_HEAD_SIZE}")
    expected = f"(2, num_blocks, block_size={metadata.block_size}, num_kv_heads, head_size={head_size})"
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or kv_cache.shape[2] != metadata.block_size or kv_cache.shape[4] != head_size:
        raise ValueError(f"kv_cache has shape {tuple(kv_cache.shape)}, expected {expected}")
    num_kv_heads = kv_cache.shape[3]
    if num_heads % num_kv_heads:
        raise ValueError(f"query's num_heads {num_heads} is not a multiple of kv_cache's num_kv_heads {num_kv_heads}")
    for name, tensor in (("key", key), ("value", value)):
        if tuple(tensor.shape) != (num_tokens, num_kv_heads, head_size):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {(num_tokens, num_kv_heads, head_size)}"
            )
    for name, tensor in (("key", key), ("value", value), ("kv_cache", kv_cache)):
        if tensor.dtype != query.dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from query dtype {query.dtype}")
    if not kv_cache.is_contiguous():
        raise ValueError("kv_cache is not contiguous: the step's keys are written through a flat view of its slots")
    on_device = {
        "key": key, "value": value, "kv_cache": kv_cache, "metadata.slot_mapping": metadata.slot_mapping,
        "metadata.block_tables": metadata.block_tables, "metadata.seq_lens": metadata.seq_lens,
        "metadata.query_start_loc": metadata.query_start_loc,
    }
    for name, tensor in on_device.items():
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device}, query on {query.device}")
    if metadata.sliding_window is not None and metadata.sliding_window < 1:
        raise ValueError(f"metadata.sliding_window {metadata.sliding_window}: at least 1 (a token sees itself)")
    if query.device.type == "cpu" and not interpreted:
        raise RuntimeError(
            "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before "
            f"{_KERNELS} is imported, or run on a CUDA, ROCm or XPU GPU"
        )
