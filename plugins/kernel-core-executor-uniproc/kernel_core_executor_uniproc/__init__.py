"""The in-process executor for kernel-core: today's single worker, in the engine's process."""
