"""Attention over the paged KV cache for kernel-core on CPUs: decode steps by a compiled kernel
reading the cache in place, prefill by the torch backend."""
