"""The SDK re-exports the whole public model-building surface, as docs/plugins.md says."""

from __future__ import annotations

import kernel_core.modeling
import kernel_core_sdk


def test_every_name_of_kernel_core_modeling_is_re_exported() -> None:
    missing = [name for name in kernel_core.modeling.__all__ if name not in kernel_core_sdk.__all__]
    assert missing == []
    for name in kernel_core.modeling.__all__:
        assert getattr(kernel_core_sdk, name) is getattr(kernel_core.modeling, name), name


def test_the_tuner_authoring_surface_is_re_exported() -> None:
    """A tuner plugin finds the whole API 1.4 authoring surface in the SDK (docs/writing-a-plugin.md)."""
    import kernel_core.contracts.buffers as buffers
    import kernel_core.contracts.delta_weight as delta_weight
    import kernel_core.contracts.tuner as contract
    import kernel_core.peft.defaults as defaults
    import kernel_core.peft.targets as targets

    for module, names in (
        (
            contract,
            (
                "BASE_ADAPTER", "BaseTunerConfig", "ExcludeModules", "LayerSelection", "ModulesToSave", "SingleLayerTuner", "Tuner",
                "TunerConfig", "TunerLayer", "bias_parameters",
            ),
        ),
        (delta_weight, ("DeltaWeightLayer",)),
        (buffers, ("BufferDict",)),
        (defaults, ("by_model_type",)),
        (targets, ("pattern_value",)),
    ):
        for name in names:
            assert name in kernel_core_sdk.__all__ and getattr(kernel_core_sdk, name) is getattr(module, name), name
