"""Test double: a "model architecture" that hands everything to transformers, so the model
suite's plumbing can be tested before a real implementation exists. Not a model."""
