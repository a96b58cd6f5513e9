"""The CPU platform for kernel-core: the fallback chosen when no accelerator is available."""
