"""The RandLoRA method: which modules it adapts, and the bases it keeps once per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.buffers import BufferDict
from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_randlora.bases import draw_bases
from kernel_core_randlora.config import DEFAULT_TARGETS, RandLoraConfig
from kernel_core_randlora.layer import RandLoraLayer


class RandLoraTuner(SingleLayerTuner):
    """RandLoRA on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it.

    ``prefix`` is ``"randlora_"`` so that the per-layer matrices (``randlora_lambda``/``_gamma``),
    the layers' references to the bases and the model-level bases (``base_model.randlora_A``/
    ``randlora_B``) all follow the state-dict rule: PEFT's files up to 0.21 hold the bases at each
    of these places.
    """

    config_class = RandLoraConfig
    prefix = "randlora_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = RandLoraLayer
    module_types = (nn.Linear, Conv1D)

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        """As PEFT: the RandLoRA adapters of a model share one ``projection_prng_key`` and one
        ``save_projection``, and only one of them may train biases."""
        assert isinstance(config, RandLoraConfig)
        for name, other in model.peft_config.items():
            if name == adapter_name or not isinstance(other, RandLoraConfig):
                continue
            for field in ("projection_prng_key", "save_projection"):
                if getattr(other, field) != getattr(config, field):
                    raise ValueError(
                        f"{field} {getattr(config, field)} differs from adapter {name!r}'s {getattr(other, field)}: "
                        "all RandLoRA adapters of a model share their bases' key and whether they are saved"
                    )
            if config.bias != "none":
                raise ValueError(f"bias={config.bias!r} with another adapter ({name!r}): only a model's single RandLoRA adapter may train biases")
        return config

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        """Draw the adapter's bases for the largest wrapped module in each dimension, cast to
        the base weights' dtype, and bind every wrapped layer to them; they are saved only if
        ``save_projection`` (a file without them then gets the same ones back from the key)."""
        assert isinstance(config, RandLoraConfig)
        base = model.base_model
        for container in ("randlora_A", "randlora_B"):
            if not hasattr(base, container):
                setattr(base, container, BufferDict())
        layers = [model.get_base_model().get_submodule(name) for name in wrapped]
        layers = [layer for layer in layers if isinstance(layer, RandLoraLayer)]
        weight = layers[0].base_layer.weight
        A, B = draw_bases(config, max(layer.out_features for layer in layers), max(layer.in_features for layer in layers))
        A, B = A.to(weight), B.to(weight)
        base.randlora_A.put(adapter_name, A, config.save_projection)
        base.randlora_B.put(adapter_name, B, config.save_projection)
        for layer in layers:
            layer.bind(adapter_name, A, B, config.save_projection)

    def adapter_file_tensors(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each saved copy of the bases on its own (safetensors refuses tensors sharing memory;
        PEFT's files hold one copy per place too)."""
        return {key: value.clone() if key.endswith(("randlora_A", "randlora_B")) else value for key, value in tensors.items()}

    def adapter_tensors_from_file(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each wrapped layer's copy of the bases from the model's: PEFT 0.22 saves them once per
        model only, earlier versions (and this plugin, so that both load its files without a
        missing-key warning) once per wrapped layer too. A layer copy the file holds is kept."""
        config = model.peft_config[adapter_name]
        assert isinstance(config, RandLoraConfig)
        loaded = dict(tensors)
        if not config.save_projection:
            return loaded
        layers = [name for name, module in model.named_modules() if isinstance(module, RandLoraLayer) and adapter_name in module.configs]
        for container in ("randlora_A", "randlora_B"):
            shared = tensors.get(f"base_model.{container}")
            if shared is not None:  # else refused as missing, naming the model's key
                for layer in layers:
                    loaded.setdefault(f"{layer}.{container}", shared)
        return loaded

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"randlora_only"``: those of wrapped layers."""
        assert isinstance(config, RandLoraConfig)
        return bias_parameters(model, wrapped, config.bias)
