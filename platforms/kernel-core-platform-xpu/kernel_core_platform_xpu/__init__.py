"""The Intel XPU platform for kernel-core."""
