"""Naive reference maths the kernel suites compare against: slow, obvious, in float64.

Written from the contracts' docstrings, not from any plugin, so that a plugin and its
reference cannot share a mistake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.moe import MoEKernel, dequantize_int8


def write_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store token ``t``'s key and value at slot ``slot_mapping[t]`` of the default cache layout."""
    block_size = kv_cache.shape[2]
    for t, slot in enumerate(slot_mapping.tolist()):
        kv_cache[0, slot // block_size, slot % block_size] = key[t]
        kv_cache[1, slot // block_size, slot % block_size] = value[t]


def dense_causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, window: int | None = None
) -> torch.Tensor:
    """Attention of ``query`` ``[Q, H, D]`` over ``key``/``value`` ``[K, KVH, D]``, where the
    queries are the last ``Q`` of the ``K`` positions; query heads share KV heads in groups.
    With ``window``, the query at position q sees only positions p with ``q - window < p``."""
    num_queries, num_heads, _ = query.shape
    num_keys, num_kv_heads, _ = key.shape
    group = num_heads // num_kv_heads
    key = key.repeat_interleave(group, dim=1)
    value = value.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query, key) * scale
    query_pos = torch.arange(num_keys - num_queries, num_keys)[:, None]
    key_pos = torch.arange(num_keys)[None, :]
    hidden = key_pos > query_pos
    if window is not None:
        hidden |= key_pos <= query_pos - window
    scores = scores.masked_fill(hidden, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), value)


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """What :meth:`AttentionBackend.forward` must compute, one request and one position at a time
    (on the CPU, whatever device ``kv_cache`` is on; it is written in place)."""
    write_kv(kv_cache, key, value, metadata.slot_mapping)
    block_size = metadata.block_size
    out = torch.empty(query.shape, dtype=torch.float64)
    starts = metadata.query_start_loc.tolist()
    for i, seq_len in enumerate(metadata.seq_lens.tolist()):
        table = metadata.block_tables[i].tolist()
        positions = [(table[pos // block_size], pos % block_size) for pos in range(seq_len)]
        keys = torch.stack([kv_cache[0, block, offset] for block, offset in positions]).cpu().double()
        values = torch.stack([kv_cache[1, block, offset] for block, offset in positions]).cpu().double()
        rows = slice(starts[i], starts[i + 1])
        out[rows] = dense_causal_attention(
            query[rows].cpu().double(), keys, values, metadata.scale, metadata.sliding_window
        )
    return out.to(query.dtype)


class ReferenceAttentionBackend(AttentionBackend):
    """:func:`paged_attention` as a backend: what the model suite runs models on by default."""

    supports_sliding_window = True

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        return paged_attention(query, key, value, kv_cache, metadata).to(query.device)


def moe(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    """What :meth:`MoEKernel.forward` must compute, one token at a time, in float64 (so that a
    bfloat16 kernel is compared with the exact result of its own rounded inputs)."""
    intermediate = w_down.shape[2]
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for t in range(hidden.shape[0]):
        x = hidden[t].double()
        weights, experts = torch.softmax(router_logits[t].double(), dim=-1).topk(top_k)
        if renormalize:
            weights = weights / weights.sum()
        for weight, expert in zip(weights, experts.tolist()):
            gate_up = w_gate_up[expert].double() @ x
            gate, up = gate_up[:intermediate], gate_up[intermediate:]
            out[t] += weight * (w_down[expert].double() @ (F.silu(gate) * up))
    return out


def lora(
    output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, token_slots: list[int]
) -> torch.Tensor:
    """What :meth:`LoRAKernel.apply` must leave in ``output``, one token at a time: a new
    tensor, in float64 on the CPU (``token_slots[t]`` is token ``t``'s slot, or ``NO_SLOT``)."""
    from kernel_core.contracts.lora import NO_SLOT

    out = output.cpu().double().clone()
    for t, slot in enumerate(token_slots):
        if slot != NO_SLOT:
            shrunk = lora_a[slot].cpu().double() @ x[t].cpu().double()
            out[t] += lora_b[slot].cpu().double() @ shrunk
    return out


class ReferenceMoEKernel(MoEKernel):
    """:func:`moe` as a kernel (int8 weights through their dequantized values), in the
    activations' dtype and device: what a model's tests can run its MoE layers on."""

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
    ) -> torch.Tensor:
        if w_gate_up_scale is not None and w_down_scale is not None:
            w_gate_up = dequantize_int8(w_gate_up, w_gate_up_scale, torch.float64)
            w_down = dequantize_int8(w_down, w_down_scale, torch.float64)
        out = moe(hidden.cpu(), router_logits.cpu(), w_gate_up.cpu(), w_down.cpu(), top_k, renormalize)
        return out.to(device=hidden.device, dtype=hidden.dtype)
