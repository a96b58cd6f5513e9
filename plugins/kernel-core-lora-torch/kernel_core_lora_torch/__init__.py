"""The portable batched LoRA kernel for kernel-core's serving: plain torch, any device torch runs on."""
