"""kernel-core-moe-cpu: int8 experts on the CPU through a compiled weight-only int8 GEMM."""
