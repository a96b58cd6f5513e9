"""The smallest serving loop for model plugins' oracle tests: paged caches, blocks handed out in
order, chunked prefill beside greedy decode, step by step as the engine runs a model.

The engine's runner is written separately; this one only has to be obviously right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.model import ModelArchitecture


class PagedRunner:
    """Runs steps of flattened requests through ``model``, each request growing its block table."""

    def __init__(
        self, model: ModelArchitecture, attention: AttentionBackend, num_blocks: int = 64, block_size: int = 4
    ) -> None:
        self.model, self.block_size = model, block_size
        shape = attention.kv_cache_shape(num_blocks, block_size, model.num_kv_heads, model.head_size)
        self.kv_caches = [torch.zeros(shape) for _ in range(model.num_layers)]
        self.free_blocks = list(range(num_blocks))
        self.block_tables: dict[int, list[int]] = {}
        self.num_computed: dict[int, int] = {}

    def step(self, chunks: dict[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Request ``r`` computes its next tokens ``chunks[r]``; returns their logits per request."""
        positions, slots, seq_lens = [], [], []
        for request, tokens in chunks.items():
            start = self.num_computed.get(request, 0)
            end = start + len(tokens)
            table = self.block_tables.setdefault(request, [])
            while len(table) * self.block_size < end:
                table.append(self.free_blocks.pop(0))
            position = torch.arange(start, end)
            positions.append(position)
            block = torch.tensor(table)[position // self.block_size]
            slots.append(block * self.block_size + position % self.block_size)
            seq_lens.append(end)
            self.num_computed[request] = end
        query_lens = [len(tokens) for tokens in chunks.values()]
        width = max(len(self.block_tables[r]) for r in chunks)
        tables = [self.block_tables[r] + [0] * (width - len(self.block_tables[r])) for r in chunks]
        metadata = AttentionMetadata(
            slot_mapping=torch.cat(slots),
            query_start_loc=torch.tensor([0, *query_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            block_size=self.block_size,
            scale=self.model.head_size**-0.5,
        )
        input_ids = torch.tensor([token for tokens in chunks.values() for token in tokens])
        with torch.inference_mode():
            hidden = self.model.forward(input_ids, torch.cat(positions), self.kv_caches, metadata)
            logits = self.model.compute_logits(hidden)
        return dict(zip(chunks, logits.split(query_lens), strict=True))


def greedy(
    runner: PagedRunner, prompts: Sequence[Sequence[int]], max_new_tokens: int, chunk_size: int
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Prefill every prompt ``chunk_size`` tokens per step, all in the same steps (a request decodes
    as soon as its prompt is done, beside others still prefilling), then decode greedily.

    Returns each prompt's logits ``[len, vocab]`` and each request's generated token ids.
    """
    prompt_logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    fed = [0] * len(prompts)
    while any(len(tokens) < max_new_tokens for tokens in generated):
        chunks = {}
        for r, prompt in enumerate(prompts):
            if fed[r] < len(prompt):
                chunks[r] = list(prompt[fed[r] : fed[r] + chunk_size])
            elif len(generated[r]) < max_new_tokens:
                chunks[r] = generated[r][-1:]
        for r, logits in runner.step(chunks).items():
            if fed[r] < len(prompts[r]):
                prompt_logits[r].append(logits)
                fed[r] += len(chunks[r])
            if fed[r] == len(prompts[r]):
                generated[r].append(int(logits[-1].argmax()))
    return [torch.cat(rows) for rows in prompt_logits], generated
