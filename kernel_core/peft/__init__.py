"""PEFT core: a transformers model with adapters whose methods are tuner plugins.

``get_config("lora", ...)`` builds a method's config, ``get_peft_model`` wraps a model, and
``PeftModel`` adds, switches, merges, combines, saves and loads adapters in PEFT's format;
``PeftMixedModel`` (``get_peft_model(..., mixed=True)``) holds adapters of several methods.
Target selection (:mod:`kernel_core.peft.targets`) is shared by every method.
"""

from kernel_core.contracts.tuner import BASE_ADAPTER
from kernel_core.peft.config import config_from_dict, config_to_dict, get_config, get_method
from kernel_core.peft.mixed import PeftMixedModel
from kernel_core.peft.model import PeftModel, get_peft_model

__all__ = [
    "BASE_ADAPTER",
    "PeftMixedModel",
    "PeftModel",
    "config_from_dict",
    "config_to_dict",
    "get_config",
    "get_method",
    "get_peft_model",
]
