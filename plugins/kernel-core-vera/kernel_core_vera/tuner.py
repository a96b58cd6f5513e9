"""The VeRA method: which modules it adapts, and the projections it keeps once per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_vera.config import DEFAULT_TARGETS, VeraConfig
from kernel_core_vera.layer import VeraLayer
from kernel_core_vera.projections import BufferDict, Projections


class VeraTuner(SingleLayerTuner):
    """VeRA on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it.

    ``prefix`` is ``"vera_"`` so that the per-layer vectors (``vera_lambda_b``/``_d``) and the
    model-level projections (``base_model.vera_A``/``vera_B``) both follow the state-dict rule.
    """

    config_class = VeraConfig
    prefix = "vera_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = VeraLayer
    module_types = (nn.Linear, Conv1D)

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        """As PEFT: every VeRA adapter of a model draws from one ``projection_prng_key``."""
        assert isinstance(config, VeraConfig)
        for name, other in model.peft_config.items():
            if name != adapter_name and isinstance(other, VeraConfig) and other.projection_prng_key != config.projection_prng_key:
                raise ValueError(
                    f"projection_prng_key {config.projection_prng_key} differs from adapter {name!r}'s "
                    f"{other.projection_prng_key}: all VeRA adapters of a model share their projections' key"
                )
        return config

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        """Draw the adapter's projections as large as the largest wrapped module in each dimension
        and bind every wrapped layer to them; they are saved only if ``save_projection`` (a file
        without them then gets the same ones back, drawn from ``projection_prng_key``)."""
        assert isinstance(config, VeraConfig)
        base = model.base_model
        for container in ("vera_A", "vera_B"):
            if not hasattr(base, container):
                setattr(base, container, BufferDict())
        projections = Projections(base.vera_A, base.vera_B)
        layers = [model.get_base_model().get_submodule(name) for name in wrapped]
        layers = [layer for layer in layers if isinstance(layer, VeraLayer)]
        in_features = max(layer.in_features for layer in layers)
        out_features = max(layer.out_features for layer in layers)
        projections.draw(
            adapter_name, config.r, in_features, out_features, config.projection_prng_key,
            persistent=config.save_projection, device=layers[0].base_layer.weight.device,
        )
        for layer in layers:
            layer.bind(projections)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"vera_only"``: those of wrapped layers."""
        assert isinstance(config, VeraConfig)
        return bias_parameters(model, wrapped, config.bias)
