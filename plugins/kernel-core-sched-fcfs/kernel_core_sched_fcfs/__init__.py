"""First come, first served scheduling for kernel-core."""
