"""kernel-core's multiprocess executor: one process per tensor-parallel rank on one node."""
