"""AdaLoRA for kernel-core."""
