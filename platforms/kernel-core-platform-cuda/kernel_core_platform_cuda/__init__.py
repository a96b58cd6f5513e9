"""The NVIDIA CUDA platform for kernel-core."""
