"""Mixture-of-experts model families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) for kernel-core, on the public
kernel_core.modeling and its FusedMoE block."""
