"""Per-request priority scheduling for kernel-core."""
