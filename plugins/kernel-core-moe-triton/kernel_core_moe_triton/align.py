"""Token-expert pairs sorted by expert and padded per expert to the kernels' row block, as
vLLM's ``moe_align_block_size`` lays them out, in torch ops that never wait on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AlignedPairs:
    """The row order the expert GEMMs walk: each block of ``block_m`` rows belongs to one expert.

    A pair is token ``t``'s ``k``-th expert choice, numbered ``t * top_k + k``.
    """

    #: ``[capacity]`` int32: the pair at each row, or the number of pairs in a padding row.
    sorted_pair_ids: torch.Tensor
    #: ``[capacity // block_m]`` int32: each block's expert; -1 for the blocks past the used rows.
    block_experts: torch.Tensor
    #: ``[1]`` int32: rows in use. A tensor, so the host never waits for it: the kernels are
    #: launched over the whole capacity and blocks past it return at once.
    num_padded: torch.Tensor


def align_block_size(expert_ids: torch.Tensor, num_experts: int, block_m: int) -> AlignedPairs:
    """Sort the pairs of ``expert_ids`` (``[T, top_k]``) by expert, keeping token order within an
    expert, and pad each expert's rows to a multiple of ``block_m``; an expert that no token chose
    takes no block.

    The capacity is the worst case, every expert padding ``block_m - 1`` rows, rounded up to
    whole blocks: the sizes depend only on the shapes, so nothing is read back from the device.
    """
    flat = expert_ids.flatten()
    num_pairs, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank_in_expert = torch.arange(num_pairs, device=device) - (counts.cumsum(0) - counts)[sorted_experts]
    rows = (padded_end - padded)[sorted_experts] + rank_in_expert

    num_blocks = -(-(num_pairs + num_experts * (block_m - 1)) // block_m)
    sorted_pair_ids = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_pair_ids[rows] = order.to(torch.int32)
    block_starts = torch.arange(0, num_blocks * block_m, block_m, device=device)
    block_experts = torch.searchsorted(padded_end, block_starts, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1).to(torch.int32)
    return AlignedPairs(sorted_pair_ids, block_experts, padded_end[-1:].to(torch.int32))
