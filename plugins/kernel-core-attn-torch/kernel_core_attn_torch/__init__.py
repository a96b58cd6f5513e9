"""Pure-torch attention over the paged KV cache for kernel-core: any device torch runs on."""
