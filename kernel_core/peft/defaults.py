"""Per-architecture defaults: what a method's config leaves out (``target_modules=None``), taken
from the method's table by the transformers ``model_type``, as PEFT's per-method mappings do.

The tables belong to the methods (``Tuner.default_target_modules``, and whatever else a method
fills in ``Tuner.before_inject``); this module looks them up, with one clear error, and holds
:data:`COMMON_TARGET_MODULES`, the model knowledge many methods' tables share.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from torch import nn

from kernel_core.contracts.tuner import Tuner, BaseTunerConfig
from kernel_core.errors import InvalidAdapterConfigError

T = TypeVar("T")
ConfigT = TypeVar("ConfigT", bound=BaseTunerConfig)

#: By transformers ``model_type``, the modules PEFT adapts by default for LoRA and the methods whose
#: tables copy LoRA's (LoHa, LoKr, OFT, BOFT, ...; VeRA and FourierFT with an entry changed): mostly
#: the attention query/value projections (facts from PEFT 0.21; a string is a regex). Read-only: a
#: method whose table differs builds its own, e.g. ``{**COMMON_TARGET_MODULES, "phi": ("q_proj", "v_proj")}``.
COMMON_TARGET_MODULES: Mapping[str, tuple[str, ...] | str] = MappingProxyType({
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"), "gpt2": ("c_attn",),
    "bloom": ("query_key_value",), "blip-2": ("q", "v", "q_proj", "v_proj"), "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "deberta": ("in_proj",),
    "layoutlm": ("query", "value"), "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",), "gpt_bigcode": ("c_attn",), "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",), "RefinedWeb": ("query_key_value",), "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"), "codegen": ("qkv_proj",), "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
})


def model_type(model: nn.Module) -> str | None:
    """The transformers ``config.model_type`` of ``model`` (a ``PeftModel`` or the model
    itself), or None for a model without one."""
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) and value else None


def by_model_type(table: Mapping[str, T], model: nn.Module, *, method: str, field: str) -> T:
    """``table[model_type(model)]``; otherwise an error naming the model type, the method, the
    field to set and the model types that have defaults."""
    kind = model_type(model)
    if kind is not None and kind in table:
        return table[kind]
    known = ", ".join(sorted(table)) or "none"
    raise InvalidAdapterConfigError(
        f"{method} has no default {field} for model type {kind!r} (it has defaults for: {known}); "
        f"set {field} in the config"
    )


def resolve_target_modules(config: ConfigT, tuner: Tuner, method: str, model: nn.Module) -> ConfigT:
    """``config`` with ``target_modules`` filled, when it is None, from ``tuner.default_targets``
    or else ``tuner.default_target_modules`` (names as a list, as PEFT saves them, or a regex
    string); unchanged otherwise."""
    if config.target_modules is not None:
        return config
    targets: Any = tuner.default_targets(model)
    if targets is None:
        targets = by_model_type(tuner.default_target_modules, model, method=method, field="target_modules")
    return config.model_copy(update={"target_modules": targets if isinstance(targets, str) else list(targets)})
