"""A test-only attention backend: slot-mapped cache writes, then dense causal attention per request.

Deliberately simple (one ``scaled_dot_product_attention`` per request) so that model tests do
not depend on any attention plugin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata


class DenseAttentionBackend(AttentionBackend):
    """Writes K/V at ``slot_mapping``, gathers each request's context from its blocks, attends."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        slots = kv_cache.flatten(1, 2)  # [2, num_blocks * block_size, kv_heads, head_size], a view
        slots[0].index_copy_(0, metadata.slot_mapping, key)
        slots[1].index_copy_(0, metadata.slot_mapping, value)
        block_size = metadata.block_size
        out = torch.empty_like(query, memory_format=torch.contiguous_format)
        start = 0
        for i, (seq_len, query_len) in enumerate(zip(metadata.seq_lens_host, metadata.query_lens_host)):
            blocks = metadata.block_tables[i, : -(-seq_len // block_size)].long()
            context = (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:seq_len]
            keys, values = slots[0, context], slots[1, context]
            rows = slice(start, start + query_len)
            future = torch.arange(seq_len)[None, :] > torch.arange(seq_len - query_len, seq_len)[:, None]
            out[rows] = F.scaled_dot_product_attention(
                query[rows].transpose(0, 1),
                keys.transpose(0, 1),
                values.transpose(0, 1),
                attn_mask=~future,
                scale=metadata.scale,
                enable_gqa=True,
            ).transpose(0, 1)
            start += query_len
        return out
