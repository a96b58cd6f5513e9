"""A fused mixture-of-experts kernel in Triton for kernel-core, shaped like vLLM's fused_moe."""
