"""P-tuning for kernel-core: a prompt-learning tuner plugin on the public authoring surface."""
