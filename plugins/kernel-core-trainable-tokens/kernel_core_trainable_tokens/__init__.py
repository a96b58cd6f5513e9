"""Trainable tokens for kernel-core: a tuner plugin written on the public tuner authoring surface."""
