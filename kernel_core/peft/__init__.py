"""PEFT core: wrapping a transformers model with adapters whose methods are tuner plugins.

Target selection (:mod:`kernel_core.peft.targets`) is shared by every method.
"""
