"""The expert-sorted row order: every pair once, blocks of one expert, padding per expert."""

from __future__ import annotations

import pytest
import torch

from kernel_core_moe_triton.align import align_block_size

BLOCK_M = 4


def rows_by_expert(expert_ids: torch.Tensor, num_experts: int) -> dict[int, list[int]]:
    """Expert → the pairs in each used block of it, in row order (padding rows left out)."""
    aligned = align_block_size(expert_ids, num_experts, BLOCK_M)
    num_pairs, num_padded = expert_ids.numel(), int(aligned.num_padded)
    ids, experts = aligned.sorted_pair_ids.tolist(), aligned.block_experts.tolist()
    assert len(ids) == len(experts) * BLOCK_M and num_padded % BLOCK_M == 0
    assert experts[num_padded // BLOCK_M :] == [-1] * (len(experts) - num_padded // BLOCK_M)
    assert set(ids[num_padded:]) <= {num_pairs}, "rows past the used ones are all padding"
    found: dict[int, list[int]] = {}
    for block, expert in enumerate(experts[: num_padded // BLOCK_M]):
        found.setdefault(expert, []).extend(p for p in ids[block * BLOCK_M : (block + 1) * BLOCK_M] if p != num_pairs)
    return found


@pytest.mark.parametrize("top_k", [1, 2])
def test_every_pair_once_in_its_experts_blocks(top_k: int) -> None:
    generator = torch.Generator().manual_seed(top_k)
    expert_ids = torch.rand(11, 6, generator=generator).topk(top_k, dim=-1).indices
    found = rows_by_expert(expert_ids, 6)
    flat = expert_ids.flatten().tolist()
    assert sorted(p for pairs in found.values() for p in pairs) == list(range(len(flat)))
    for expert, pairs in found.items():
        assert pairs == [p for p, e in enumerate(flat) if e == expert], "an expert's pairs, in token order"


def test_padding_is_per_expert_and_idle_experts_take_no_block() -> None:
    # Expert 0: 5 pairs (2 blocks), expert 1: none, expert 2: 4 (1 block), expert 3: 1 (1 block).
    expert_ids = torch.tensor([[0, 2], [0, 3], [2, 0], [2, 0], [0, 2]])
    aligned = align_block_size(expert_ids, 4, BLOCK_M)
    assert int(aligned.num_padded) == 4 * BLOCK_M
    assert aligned.block_experts.tolist()[:4] == [0, 0, 2, 3]
    found = rows_by_expert(expert_ids, 4)
    assert found == {0: [0, 2, 5, 7, 8], 2: [1, 4, 6, 9], 3: [3]}
    ids = aligned.sorted_pair_ids.tolist()
    assert ids[5:8] == [10] * 3 and ids[13:16] == [10] * 3, "each expert pads its own last block"


def test_capacity_holds_the_worst_case() -> None:
    """One pair per expert pads every expert: the fixed capacity still holds all rows."""
    expert_ids = torch.arange(8).view(8, 1)
    aligned = align_block_size(expert_ids, 8, BLOCK_M)
    assert int(aligned.num_padded) == 8 * BLOCK_M <= aligned.sorted_pair_ids.numel()
    assert aligned.block_experts.tolist()[:8] == list(range(8))
