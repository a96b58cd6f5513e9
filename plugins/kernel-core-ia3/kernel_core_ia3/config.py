"""IA3's hyper-parameters, with PEFT's field names and defaults, and its per-architecture tables.

PEFT's ``IA3Config`` has ``exclude_modules`` and ``modules_to_save`` but no layer filters, so
this config inherits those two mixins only: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from kernel_core.contracts.tuner import ExcludeModules, ModulesToSave, BaseTunerConfig

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("k", "v", "wo"), "mt5": ("k", "v", "wi_1"), "gpt2": ("c_attn", "mlp.c_proj"),
    "bloom": ("query_key_value", "mlp.dense_4h_to_h"), "roberta": ("key", "value", "output.dense"),
    "opt": ("q_proj", "k_proj", "fc2"), "gptj": ("q_proj", "v_proj", "fc_out"),
    "gpt_neox": ("query_key_value", "dense_4h_to_h"), "gpt_neo": ("q_proj", "v_proj", "c_proj"),
    "bart": ("q_proj", "v_proj", "fc2"), "gpt_bigcode": ("c_attn", "mlp.c_proj"),
    "llama": ("k_proj", "v_proj", "down_proj"), "llama4": ("q_proj", "v_proj", "down_proj"),
    "mistral": ("k_proj", "v_proj", "down_proj"), "mixtral": ("k_proj", "v_proj", "w2"),
    "bert": ("key", "value", "output.dense"), "deberta-v2": ("key_proj", "value_proj", "output.dense"),
    "deberta": ("in_proj", "output.dense"), "RefinedWebModel": ("query_key_value", "dense_4h_to_h"),
    "RefinedWeb": ("query_key_value", "dense_4h_to_h"), "falcon": ("query_key_value", "dense_4h_to_h"),
    "phi": ("q_proj", "v_proj", "fc2"), "gemma": ("q_proj", "v_proj", "down_proj"),
    "gemma2": ("q_proj", "v_proj", "down_proj"), "gemma3_text": ("q_proj", "v_proj", "down_proj"),
    "qwen2": ("q_proj", "v_proj", "down_proj"), "qwen3": ("q_proj", "v_proj", "down_proj"),
}
#: ``feedforward_modules`` when a config has none, by ``model_type`` (facts from PEFT).
DEFAULT_FEEDFORWARD: dict[str, tuple[str, ...]] = {
    "t5": ("wo",), "mt5": (), "gpt2": ("mlp.c_proj",), "bloom": ("mlp.dense_4h_to_h",),
    "roberta": ("output.dense",), "opt": ("fc2",), "gptj": ("fc_out",), "gpt_neox": ("dense_4h_to_h",),
    "gpt_neo": ("c_proj",), "bart": ("fc2",), "gpt_bigcode": ("mlp.c_proj",), "llama": ("down_proj",),
    "llama4": ("down_proj",), "mistral": ("down_proj",), "mixtral": ("w2",), "bert": ("output.dense",),
    "deberta-v2": ("output.dense",), "deberta": ("output.dense",), "RefinedWeb": ("dense_4h_to_h",),
    "RefinedWebModel": ("dense_4h_to_h",), "falcon": ("dense_4h_to_h",), "phi": ("fc2",),
    "gemma": ("down_proj",), "gemma2": ("down_proj",), "gemma3_text": ("down_proj",),
    "qwen2": ("down_proj",), "qwen3": ("down_proj",),
}


class IA3Config(BaseTunerConfig, ExcludeModules, ModulesToSave):
    """One IA3 adapter: a learned vector scales the input of each feed-forward module and the
    output of every other target module."""

    feedforward_modules: list[str] | str | None = Field(
        default=None,
        description="Targets whose input is scaled (a list of names or a regex); None: the model type's defaults.",
    )
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    init_ia3_weights: bool = Field(default=True, description="Scales of one (the identity); False: random, for tests.")

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> IA3Config:
        """As in PEFT: listed feed-forward modules must be among listed targets. An entry may
        also end a target's name: PEFT saves ``"all-linear"`` expanded to full module names,
        which its own exact-set check then refuses to read back."""
        if isinstance(self.feedforward_modules, list) and isinstance(self.target_modules, list):
            targets = self.target_modules
            stray = sorted(
                entry for entry in self.feedforward_modules
                if not any(target == entry or target.endswith("." + entry) for target in targets)
            )
            if stray:
                raise ValueError(f"feedforward_modules {stray} are not in target_modules {self.target_modules}")
        return self

    @property
    def is_feedforward(self) -> bool:
        """Whether the module this config was made for (:attr:`module_name`) is a feed-forward one."""
        return self.module_name is not None and is_feedforward(self.module_name, self.feedforward_modules)


def is_feedforward(name: str, modules: list[str] | str | None) -> bool:
    """Whether ``feedforward_modules`` makes module ``name`` (``model.layers.0.mlp.down_proj``)
    a feed-forward one, by PEFT's rule: a regex must match the whole name, a list entry its end."""
    if modules is None:
        return False
    if isinstance(modules, str):
        return re.fullmatch(modules, name) is not None
    return any(name.endswith(entry) for entry in modules)
