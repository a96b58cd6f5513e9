"""LoRA for kernel-core: low-rank adapters on Linear, Embedding and GPT-2's Conv1D layers."""
