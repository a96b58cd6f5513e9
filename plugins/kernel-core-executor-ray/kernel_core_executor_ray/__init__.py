"""kernel-core's Ray executor: tensor-parallel ranks as Ray actors, on one node or many."""
