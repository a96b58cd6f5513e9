"""The Llama family (Llama, Mistral, Qwen2, Qwen3) for kernel-core, on the public kernel_core.modeling."""
