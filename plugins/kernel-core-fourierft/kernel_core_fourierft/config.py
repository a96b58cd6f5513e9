"""FourierFT's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``FourierFTConfig`` has every target filter, so this config inherits all three mixins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES
from kernel_core.peft.targets import pattern_value

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, the common one, with GPT-2's and GPT-BigCode's MLP output projection).
DEFAULT_TARGETS = {**COMMON_TARGET_MODULES, "gpt2": ("mlp.c_proj",), "gpt_bigcode": ("mlp.c_proj",)}


class FourierFTConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One FourierFT adapter: per target module, ``n_frequency`` learned coefficients at places of
    the weight's 2-D spectrum drawn from ``random_loc_seed``; the update is the real part of their
    inverse 2-D FFT times ``scaling``."""

    n_frequency: int = Field(default=1000, gt=0, description="Learned spectral coefficients per module.")
    scaling: float = Field(default=150.0, description="Factor on the inverse FFT (like LoRA's alpha / r).")
    random_loc_seed: int = Field(default=777, description="Seed the coefficients' places are drawn from.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    bias: Literal["none", "all", "fourier_only"] = Field(default="none", description="Which base biases train too.")
    n_frequency_pattern: dict[str, int] = Field(
        default_factory=dict, description="n_frequency per module, by regex on the end of the name."
    )
    init_weights: bool = Field(default=False, description="True: coefficients zero (the identity); False: random normal.")

    def for_module(self, module_name: str) -> FourierFTConfig:
        """This module's ``n_frequency``, from ``n_frequency_pattern``."""
        config = super().for_module(module_name)
        n_frequency = pattern_value(module_name, self.n_frequency_pattern, self.n_frequency)
        if n_frequency != self.n_frequency:
            config = config.model_copy(update={"n_frequency": n_frequency})
            config._module_name = module_name
        return config
