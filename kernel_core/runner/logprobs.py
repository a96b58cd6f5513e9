"""Log-probabilities of chosen tokens and their top-N alternatives, for outputs and prompts.

The runner returns plain lists (no tokenizer at hand); the engine turns each position into
``{token_id: Logprob}`` with :meth:`TokenLogprobs.to_dict`, decoding the token texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kernel_core.outputs import Logprob, PositionLogprobs

#: Prompt positions per log_softmax: bounds memory to about this many rows times the vocabulary.
_PROMPT_CHUNK = 256


@dataclass(slots=True)
class TokenLogprobs:
    """One position: the chosen token first, then the top-N tokens; ranks are 1-based."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]

    def to_dict(self, decode: Callable[[int], str]) -> PositionLogprobs:
        """``{token_id: Logprob}`` with ``decode(token_id)`` as text; the chosen token comes first."""
        entries: PositionLogprobs = {}
        for token_id, logprob, rank in zip(self.token_ids, self.logprobs, self.ranks):
            if token_id not in entries:  # the chosen token may also be among the top-N
                entries[token_id] = Logprob(logprob, rank, decode(token_id))
        return entries


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> list[TokenLogprobs]:
    """Per row of ``logprobs`` ``[M, V]``: the logprob and rank of ``token_ids[row]``, then the top
    ``num_top[row]`` entries."""
    chosen = logprobs.gather(1, token_ids.view(-1, 1))
    ranks = ((logprobs > chosen).sum(-1) + 1).tolist()
    width = max(num_top, default=0)
    top_values, top_ids = logprobs.topk(width, dim=-1)
    ids = torch.cat((token_ids.view(-1, 1), top_ids), dim=1).tolist()
    values = torch.cat((chosen, top_values), dim=1).tolist()
    return [
        TokenLogprobs(ids[row][: n + 1], values[row][: n + 1], [ranks[row], *range(1, n + 1)])
        for row, n in enumerate(num_top)
    ]


def prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor | Sequence[int], num_top: int
) -> list[TokenLogprobs]:
    """Logprobs of prompt tokens: row ``i`` of ``logits`` ``[P, V]`` is the prediction made for
    ``next_token_ids[i]`` (the token that follows it in the prompt).

    Raw model logprobs, as for sampled tokens; computed in chunks so a long prompt never needs
    a ``[P, V]`` float32 copy at once.
    """
    next_ids = torch.as_tensor(next_token_ids, dtype=torch.long, device=logits.device)
    if next_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for {next_ids.shape[0]} prompt tokens")
    result: list[TokenLogprobs] = []
    for start in range(0, logits.shape[0], _PROMPT_CHUNK):
        stop = start + _PROMPT_CHUNK
        chunk = logits[start:stop].float().log_softmax(-1)
        result += gather_logprobs(chunk, next_ids[start:stop], [num_top] * chunk.shape[0])
    return result
