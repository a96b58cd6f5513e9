"""C3A's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``C3AConfig`` has ``modules_to_save`` and the layer filters but no ``exclude_modules``,
so this config inherits those two mixins only: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from kernel_core.contracts.tuner import BaseTunerConfig, LayerSelection, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES
from kernel_core.peft.targets import pattern_value

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, the common one, with GPT-2's and GPT-BigCode's MLP output projection).
DEFAULT_TARGETS = {**COMMON_TARGET_MODULES, "gpt2": ("mlp.c_proj",), "gpt_bigcode": ("mlp.c_proj",)}


class C3AConfig(BaseTunerConfig, LayerSelection, ModulesToSave):
    """One C3A adapter: per target module, a trained kernel of ``(out / b) x (in / b)`` vectors
    of length ``b = block_size``; the update is the block matrix of their circulant matrices,
    divided by ``in_features``."""

    block_size: PositiveInt = Field(
        default=256, description="Length of each circular convolution; must divide the in and out features of every target."
    )
    block_size_pattern: dict[str, PositiveInt] = Field(
        default_factory=dict, description="block_size per module, by regex on the end of the name."
    )
    bias: Literal["none", "all", "c3a_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool | Literal["gaussian", "kaiming_uniform", "xavier_uniform"] = Field(
        default="xavier_uniform",
        description="True: zero kernels (the identity); False or 'xavier_uniform': uniform in +-sqrt(6 / (in + out)); "
        "'kaiming_uniform': uniform in +-sqrt(1 / in); 'gaussian': standard normal.",
    )

    def for_module(self, module_name: str) -> C3AConfig:
        """This module's ``block_size``, from ``block_size_pattern``."""
        config = super().for_module(module_name)
        block_size = pattern_value(module_name, self.block_size_pattern, self.block_size)
        if block_size != self.block_size:
            config = config.model_copy(update={"block_size": block_size})
            config._module_name = module_name
        return config
