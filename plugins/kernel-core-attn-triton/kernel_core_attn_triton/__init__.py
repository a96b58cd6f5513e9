"""Attention over the paged KV cache for kernel-core in one Triton kernel per layer, shaped like
vLLM's unified triton_attn kernel: prefill, chunked prefill and decode rows in the same launch."""
