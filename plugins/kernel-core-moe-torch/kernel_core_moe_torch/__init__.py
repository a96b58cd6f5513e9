"""The portable mixture-of-experts kernel for kernel-core: plain torch, any device torch runs on."""
