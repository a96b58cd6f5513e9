"""Repetition, frequency and presence penalties, applied in place to the rows that ask for them.

Semantics are vLLM's (and OpenAI's): the repetition penalty (CTRL / Hugging Face style) divides
positive logits and multiplies negative ones for every token seen in the prompt or the output;
then the frequency penalty subtracts itself once per occurrence of a token in the output, and the
presence penalty once per distinct output token.

Only the seen ``(row, token)`` entries are touched (gathered and scattered by flat index), never a
dense ``[N, V]`` count matrix: a step reads a few thousand entries instead of millions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernel_core.sampling_params import SamplingParams


def needs_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
    )


def apply_penalties(
    logits: torch.Tensor,
    row_index: Sequence[int],
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
) -> None:
    """Penalise rows ``row_index`` of contiguous ``logits`` ``[N, V]`` in place; the other
    arguments are aligned with ``row_index``."""
    vocab = logits.shape[1]
    flat = logits.view(-1)
    outputs = _flat_ids(row_index, output_token_ids, vocab, logits.device)

    repeating = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if repeating:
        prompts = _flat_ids(
            [row_index[i] for i in repeating], [prompt_token_ids[i] for i in repeating], vocab, logits.device
        )
        seen = torch.unique(torch.cat((outputs, prompts)))
        factor = _per_row(logits, row_index, [p.repetition_penalty for p in params]).index_select(
            0, seen // vocab
        )
        values = flat.index_select(0, seen)
        flat.index_copy_(0, seen, torch.where(values > 0, values / factor, values * factor))

    if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params):
        tokens, counts = torch.unique(outputs, return_counts=True)
        row = tokens // vocab
        frequency = _per_row(logits, row_index, [p.frequency_penalty for p in params]).index_select(0, row)
        presence = _per_row(logits, row_index, [p.presence_penalty for p in params]).index_select(0, row)
        flat.index_add_(0, tokens, frequency * counts + presence, alpha=-1)


def _per_row(logits: torch.Tensor, row_index: Sequence[int], values: list[float]) -> torch.Tensor:
    """``[N]`` tensor holding ``values`` at ``row_index``, so a flat index's row looks up its value."""
    per_row = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    per_row[list(row_index)] = torch.tensor(values, dtype=logits.dtype, device=logits.device)
    return per_row


def _flat_ids(
    row_index: Sequence[int], token_ids: Sequence[Sequence[int]], vocab: int, device: torch.device
) -> torch.Tensor:
    """Flat indices ``row * vocab + token`` of every token of every row."""
    return torch.cat(
        [
            torch.as_tensor(ids, dtype=torch.long, device=device).view(-1) + row * vocab
            for row, ids in zip(row_index, token_ids)
        ]
    )
