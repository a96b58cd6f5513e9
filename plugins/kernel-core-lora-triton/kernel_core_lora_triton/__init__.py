"""Batched LoRA for kernel-core's serving in Triton: SGMV shrink and expand over the step's adapter slots."""
