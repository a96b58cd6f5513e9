"""The AMD ROCm platform for kernel-core."""
