"""Conformance suite for tuners (PEFT methods).

The checks follow :mod:`kernel_core.contracts.tuner`: a wrapped layer holds named adapters in
containers named with the tuner's prefix, switches, deletes, disables and merges them, and
serves a mixed batch (one adapter per row) exactly as each row computed alone.
"""

from __future__ import annotations

import json
import typing
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pydantic
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.tuner import BASE_ADAPTER, Tuner, BaseTunerConfig, TunerLayer
from kernel_core_sdk.conformance._plugin import PluginUnderTest

#: Modules every tuner is offered by default; tests of one it cannot wrap are skipped.
CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(16, 8),
    "linear-no-bias": lambda: nn.Linear(16, 8, bias=False),
    "embedding": lambda: nn.Embedding(10, 16),
}
#: ``nn.Conv2d`` candidates for a method that adapts convolutions: a 3x3 kernel and a grouped 1x1
#: one (add them: ``candidates = {**CANDIDATES, **CONV2D_CANDIDATES}``).
CONV2D_CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "conv2d-3x3": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv2d-1x1-grouped": lambda: nn.Conv2d(4, 6, 1, groups=2),
}
#: Names a candidate module is given, as in a model; each test of a wrapped module runs once per
#: entry, with the config ``tuner_config.for_module(name)`` (the per-module option channel).
MODULE_NAMES: tuple[str, ...] = ("model.layers.0.mlp.up_proj",)
#: The adapter ``wrap`` creates, and the one a test adds with ``update_layer``.
ADAPTER = "default"
OTHER = "other"


class TunerConformance(PluginUnderTest):
    """Subclass as ``TestMyTuner(TunerConformance)`` to check a tuner plugin.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the tuner's record name, when the module registers several.

    Fixtures and attributes you may override:

    - ``tuner``: the instance under test; defaults to the class called with no arguments.
    - ``tuner_config``: a valid config; defaults to ``config_class()`` (override when a field
      is required). It may make a new adapter the identity: tests train one step first where
      they need an adapter that changes the output.
    - ``candidates`` (class attribute): name -> factory of the modules offered to ``wrap``,
      each test running once per entry (default :data:`CANDIDATES`: ``nn.Linear`` with and
      without bias, ``nn.Embedding``). Tests of a module ``can_wrap`` declines are skipped.
      Add your own with ``candidates = {**CANDIDATES, "conv1d": lambda: Conv1D(8, 16)}``, or
      :data:`CONV2D_CANDIDATES`.
    - ``module_names`` (class attribute): the dotted names a candidate module gets, as in a
      model (default :data:`MODULE_NAMES`); ``wrap`` and ``update_layer`` receive
      ``tuner_config.for_module(name)``, each test running once per name. Give names that
      reach every per-module option of the method, e.g. IA3's suite names a feed-forward and
      an attention module, so that both the input- and the output-scaling layers are checked.
    - ``other_config``: the config the tests that add a second adapter give it; defaults to
      the first adapter's (override when two adapters of a module may not share options:
      trainable tokens refuse two active adapters with overlapping token indices, as PEFT).
    - ``module_input``: an input batch for ``candidate_module`` (rows along dim 0, at least
      two); defaults handle Linear-like modules (``in_features``), ``Conv1D``, ``Conv2d``
      (3 images of 5x5) and Embedding.
    - ``rejected_module``: a module ``can_wrap`` must decline (default ``nn.LayerNorm``).

    Wrapped layers are put in eval mode, so that outputs compare deterministically.
    """

    kind = PluginKind.TUNER
    contract = Tuner
    candidates: ClassVar[Mapping[str, Callable[[], nn.Module]]] = CANDIDATES
    module_names: ClassVar[Sequence[str]] = MODULE_NAMES

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "candidate_name" in metafunc.fixturenames:
            metafunc.parametrize("candidate_name", sorted(self.candidates))
        if "module_name" in metafunc.fixturenames:
            metafunc.parametrize("module_name", list(self.module_names))

    @pytest.fixture
    def tuner(self, construct: Callable[..., Tuner]) -> Tuner:
        return construct()

    @pytest.fixture
    def tuner_config(self, tuner: Tuner) -> BaseTunerConfig:
        return tuner.config_class()

    @pytest.fixture
    def module_config(self, tuner_config: BaseTunerConfig, module_name: str) -> BaseTunerConfig:
        """The config the module named ``module_name`` gets."""
        return tuner_config.for_module(module_name)

    @pytest.fixture
    def other_config(self, module_config: BaseTunerConfig) -> BaseTunerConfig:
        """The config the second adapter (:data:`OTHER`) of a module gets; default the first's."""
        return module_config

    @pytest.fixture
    def candidate_module(self, candidate_name: str) -> nn.Module:
        torch.manual_seed(0)
        return self.candidates[candidate_name]()

    @pytest.fixture
    def module_input(self, candidate_module: nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        if isinstance(candidate_module, nn.Embedding):
            return torch.randint(candidate_module.num_embeddings, (3, 5), generator=generator)
        if isinstance(candidate_module, nn.Conv2d):
            return torch.randn(3, candidate_module.in_channels, 5, 5, generator=generator)
        return torch.randn(3, 5, input_features(candidate_module), generator=generator)

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return nn.LayerNorm(16)

    @pytest.fixture
    def wrapped(self, tuner: Tuner, module_config: BaseTunerConfig, candidate_module: nn.Module) -> TunerLayer:
        if not tuner.can_wrap(candidate_module):
            pytest.skip(
                f"does not wrap {type(candidate_module).__name__}; set candidates to test what it wraps"
            )
        return tuner.wrap(candidate_module, ADAPTER, module_config).eval()

    # -- config and identity -----------------------------------------------------------------

    def test_config_class_is_a_tuner_config(self, tuner: Tuner, tuner_config: BaseTunerConfig) -> None:
        assert issubclass(tuner.config_class, BaseTunerConfig)
        assert isinstance(tuner_config, tuner.config_class)
        for name in self.module_names:
            per_module = tuner_config.for_module(name)
            assert isinstance(per_module, tuner.config_class), "for_module() must return the same config class"
            assert per_module.module_name == name, (
                f"for_module({name!r}).module_name is {per_module.module_name!r}: call super().for_module(name) "
                "so that the layer learns which module it wraps"
            )
            assert tuner_config.module_name is None, "for_module() must return a copy, not change the config"
            assert per_module.to_dict() == tuner_config.for_module(name).to_dict()

    def test_config_rejects_unknown_fields(self, tuner: Tuner, tuner_config: BaseTunerConfig) -> None:
        with pytest.raises(pydantic.ValidationError):
            tuner.config_class(**tuner_config.model_dump(), surely_not_a_field=1)

    def test_config_round_trips_through_a_dict(self, tuner: Tuner, tuner_config: BaseTunerConfig) -> None:
        data = tuner_config.to_dict()
        as_file = json.loads(json.dumps(data))  # to_dict() is what adapter_config.json holds
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # known keys, PEFT's bookkeeping and inert keys: no warning
            assert tuner.config_class.from_dict(as_file) == tuner_config
            assert tuner.config_class.from_dict({**as_file, "peft_type": "ANY"}) == tuner_config
            for key, inert in tuner.config_class.inert_peft_keys.items():
                tuner.config_class.from_dict({**as_file, key: inert})

    def test_from_dict_warns_about_unknown_keys(self, tuner: Tuner, tuner_config: BaseTunerConfig) -> None:
        data = {**tuner_config.to_dict(), "surely_not_a_field": 1}
        with pytest.warns(UserWarning, match="surely_not_a_field"):
            loaded = tuner.config_class.from_dict(data)
        assert loaded == tuner_config

    def test_config_rejects_wrong_types(self, tuner: Tuner, tuner_config: BaseTunerConfig) -> None:
        data = tuner_config.to_dict()
        with pytest.raises(pydantic.ValidationError):
            tuner.config_class.from_dict({**data, "target_modules": 5})
        accepted = []
        for name, field in tuner.config_class.model_fields.items():
            if field.annotation in (Any, object) or typing.get_origin(field.annotation) is typing.Annotated:
                continue
            try:
                tuner.config_class.from_dict({**data, name: _NotAValue()})
            except pydantic.ValidationError:
                continue
            accepted.append(name)
        assert not accepted, f"fields accepting a value of the wrong type: {accepted}"

    def test_prefix_is_named(self, tuner: Tuner) -> None:
        assert isinstance(tuner.prefix, str) and tuner.prefix.strip()
        assert "." not in tuner.prefix and not "base_layer".startswith(tuner.prefix), tuner.prefix

    def test_declines_unsupported_modules(self, tuner: Tuner, rejected_module: nn.Module) -> None:
        assert tuner.can_wrap(rejected_module) is False

    # -- the wrapped module --------------------------------------------------------------------

    def test_wrap_returns_a_layer_with_the_adapter_active(
        self, wrapped: TunerLayer, candidate_module: nn.Module
    ) -> None:
        assert isinstance(wrapped, TunerLayer), f"wrap() returned {type(wrapped).__name__}, not a TunerLayer"
        assert wrapped.base_layer is candidate_module, "the wrapped module must be the layer's base_layer"
        assert wrapped.adapter_names == [ADAPTER]
        assert wrapped.active_adapters == [ADAPTER]
        assert wrapped.merged_adapters == [] and wrapped.merged is False
        assert wrapped.disable_adapters is False and wrapped.row_adapters is None

    def test_state_dict_names_follow_the_prefix_rule(self, tuner: Tuner, wrapped: TunerLayer) -> None:
        adapter_keys = [key for key in wrapped.state_dict() if not key.startswith("base_layer.")]
        assert adapter_keys, "the adapter has no tensors in the state dict"
        misnamed = [key for key in adapter_keys if container_and_adapter(key, tuner.prefix) != ADAPTER]
        assert not misnamed, (
            f"adapter tensors must be named <container>.<adapter>[...] with the container starting with "
            f"{tuner.prefix!r} and keyed by the adapter name {ADAPTER!r}: {misnamed}"
        )

    def test_only_adapter_parameters_train(self, tuner: Tuner, wrapped: TunerLayer) -> None:
        trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
        assert trainable, "the adapter has no trainable parameter"
        stray = [name for name in trainable if container_and_adapter(name, tuner.prefix) is None]
        assert not stray, f"trainable parameters outside the {tuner.prefix!r} containers: {stray}"

    def test_forward_keeps_the_output_shape(
        self, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        with torch.no_grad():
            assert wrapped(module_input).shape == wrapped.base_layer(module_input).shape

    def test_moves_and_converts_like_a_module(self, wrapped: TunerLayer, module_input: torch.Tensor) -> None:
        """``Trainer`` and ``PeftModel`` call ``.to(device)`` and dtype casts on every module: a
        layer must not shadow ``nn.Module`` internals such as ``_apply``."""
        before = output(wrapped, module_input)
        assert wrapped.to(module_input.device) is wrapped
        assert wrapped.double() is wrapped
        converted = output(wrapped, module_input.double() if module_input.is_floating_point() else module_input)
        assert converted.dtype == torch.float64
        torch.testing.assert_close(converted, before.double(), rtol=1e-4, atol=1e-5)

    def test_training_step_changes_the_output(
        self, tuner: Tuner, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        before = output(wrapped, module_input)
        train_step(wrapped, module_input)
        frozen_with_grad = [
            name for name, p in wrapped.named_parameters()
            if container_and_adapter(name, tuner.prefix) is None and p.grad is not None
        ]
        assert not frozen_with_grad, f"base parameters received gradients: {frozen_with_grad}"
        assert not torch.allclose(output(wrapped, module_input), before), "a gradient step left the output unchanged"

    # -- several adapters ----------------------------------------------------------------------

    def test_second_adapter_switches_output_and_training(
        self, tuner: Tuner, other_config: BaseTunerConfig, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        train_step(wrapped, module_input)
        first = output(wrapped, module_input)
        wrapped.update_layer(OTHER, other_config)
        assert sorted(wrapped.adapter_names) == sorted([ADAPTER, OTHER])
        names = [key for key in wrapped.state_dict() if not key.startswith("base_layer.")]
        assert {container_and_adapter(key, tuner.prefix) for key in names} == {ADAPTER, OTHER}, names

        wrapped.set_adapter([OTHER])
        assert wrapped.active_adapters == [OTHER]
        assert_trains_only(wrapped, tuner.prefix, {OTHER})
        kept = adapter_state(wrapped, tuner.prefix, ADAPTER)
        train_step(wrapped, module_input, seed=3)
        for key, value in adapter_state(wrapped, tuner.prefix, ADAPTER).items():
            assert torch.equal(value, kept[key]), f"training {OTHER!r} changed {key} of the inactive adapter"
        second = output(wrapped, module_input)
        assert not torch.allclose(second, first), "set_adapter() did not change the output"

        wrapped.set_adapter([ADAPTER])
        assert wrapped.active_adapters == [ADAPTER]
        assert_trains_only(wrapped, tuner.prefix, {ADAPTER})
        torch.testing.assert_close(output(wrapped, module_input), first, atol=1e-6, rtol=1e-6)

    def test_delete_adapter_removes_its_parameters(
        self, tuner: Tuner, other_config: BaseTunerConfig, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        train_step(wrapped, module_input)
        first = output(wrapped, module_input)
        base = output(wrapped.base_layer, module_input)
        wrapped.update_layer(OTHER, other_config)
        wrapped.set_adapter([OTHER])

        wrapped.delete_adapter(OTHER)
        assert wrapped.adapter_names == [ADAPTER]
        assert OTHER not in wrapped.active_adapters, "a deleted adapter must not stay active"
        left = [key for key in wrapped.state_dict() if container_and_adapter(key, tuner.prefix) == OTHER]
        assert not left, f"delete_adapter({OTHER!r}) left {left}"
        torch.testing.assert_close(output(wrapped, module_input), base, atol=1e-6, rtol=1e-6)

        wrapped.set_adapter([ADAPTER])
        torch.testing.assert_close(output(wrapped, module_input), first, atol=1e-6, rtol=1e-6)

    def test_disabled_adapters_give_the_base_output(self, wrapped: TunerLayer, module_input: torch.Tensor) -> None:
        train_step(wrapped, module_input)
        enabled = output(wrapped, module_input)
        base = output(wrapped.base_layer, module_input)
        assert not torch.allclose(enabled, base)

        wrapped.disable_adapters = True
        torch.testing.assert_close(output(wrapped, module_input), base, atol=1e-6, rtol=1e-6)
        wrapped.disable_adapters = False
        torch.testing.assert_close(output(wrapped, module_input), enabled, atol=1e-6, rtol=1e-6)

        wrapped.merge()
        wrapped.disable_adapters = True
        torch.testing.assert_close(
            output(wrapped, module_input), base, atol=1e-5, rtol=1e-5,
            msg=lambda m: f"disabled while merged, the output must still be the base model's: {m}",
        )
        wrapped.disable_adapters = False
        torch.testing.assert_close(output(wrapped, module_input), enabled, atol=1e-5, rtol=1e-5)

    def test_mixed_batch_matches_each_row_alone(
        self, other_config: BaseTunerConfig, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        wrapped.update_layer(OTHER, other_config)
        x = two_trained_adapters(wrapped, module_input)
        pattern = [ADAPTER, BASE_ADAPTER, OTHER, ADAPTER]
        rows = [pattern[i % len(pattern)] for i in range(x.shape[0])]

        alone = {BASE_ADAPTER: output(wrapped.base_layer, x)}
        for name in (ADAPTER, OTHER):
            wrapped.set_adapter([name])
            alone[name] = output(wrapped, x)
        assert not torch.allclose(alone[ADAPTER], alone[OTHER]), "the two trained adapters should differ"
        expected = torch.stack([alone[name][i] for i, name in enumerate(rows)])

        wrapped.set_adapter([ADAPTER])  # rows override the active adapter
        wrapped.row_adapters = rows
        try:
            mixed = output(wrapped, x)
            with pytest.raises(ValueError):
                wrapped.row_adapters = rows[:-1]
                output(wrapped, x)
        finally:
            wrapped.row_adapters = None
        for i, name in enumerate(rows):
            torch.testing.assert_close(
                mixed[i], expected[i], atol=1e-5, rtol=1e-5, msg=lambda m, i=i, name=name: f"row {i} ({name}): {m}"
            )
        torch.testing.assert_close(output(wrapped, x), alone[ADAPTER], atol=1e-6, rtol=1e-6)

    # -- merging -------------------------------------------------------------------------------

    def test_merge_matches_and_unmerge_restores(
        self, tuner: Tuner, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        train_step(wrapped, module_input)  # so that the adapter is not the identity
        base = base_state(wrapped)
        unmerged = output(wrapped, module_input)

        wrapped.merge()
        assert wrapped.merged is True and wrapped.merged_adapters == [ADAPTER]
        merged = base_state(wrapped)
        assert any(not torch.equal(value, base[key]) for key, value in merged.items()), (
            "merge() must fold the adapter into the base weights"
        )
        torch.testing.assert_close(output(wrapped, module_input), unmerged, atol=1e-5, rtol=1e-5)

        wrapped.unmerge()
        assert wrapped.merged is False and wrapped.merged_adapters == []
        assert_base_restored(wrapped, base, merged)
        torch.testing.assert_close(output(wrapped, module_input), unmerged, atol=1e-5, rtol=1e-5)

    def test_merge_given_adapters(
        self, other_config: BaseTunerConfig, wrapped: TunerLayer, module_input: torch.Tensor
    ) -> None:
        wrapped.update_layer(OTHER, other_config)
        x = two_trained_adapters(wrapped, module_input)
        base = base_state(wrapped)
        alone = {}
        for names in ([ADAPTER], [OTHER], [ADAPTER, OTHER]):
            wrapped.set_adapter(names)
            alone[tuple(names)] = output(wrapped, x)

        wrapped.set_adapter([ADAPTER])
        wrapped.merge([OTHER])
        assert wrapped.merged_adapters == [OTHER], "merge(names) merges those adapters, not the active ones"
        merged = base_state(wrapped)
        torch.testing.assert_close(
            output(wrapped, x), alone[(OTHER,)], atol=1e-5, rtol=1e-5,
            msg=lambda m: f"merged {OTHER!r} must compute as {OTHER!r} alone: {m}",
        )
        wrapped.unmerge()
        assert wrapped.merged_adapters == []
        assert_base_restored(wrapped, base, merged)
        torch.testing.assert_close(output(wrapped, x), alone[(ADAPTER,)], atol=1e-5, rtol=1e-5)

        wrapped.merge([ADAPTER, OTHER])
        assert sorted(wrapped.merged_adapters) == sorted([ADAPTER, OTHER])
        merged = base_state(wrapped)
        torch.testing.assert_close(
            output(wrapped, x), alone[(ADAPTER, OTHER)], atol=1e-5, rtol=1e-5,
            msg=lambda m: f"both merged must compute as both active: {m}",
        )
        wrapped.unmerge()
        assert wrapped.merged_adapters == []
        assert_base_restored(wrapped, base, merged)

    def test_trained_base_parameters_name_model_parameters(
        self, tuner: Tuner, tuner_config: BaseTunerConfig, wrapped: TunerLayer
    ) -> None:
        model = nn.Sequential(OrderedDict(layer=wrapped))
        names = tuner.trained_base_parameters(tuner_config, model, ["layer"])
        assert isinstance(names, list)
        unknown = [name for name in names if name not in dict(model.named_parameters())]
        assert not unknown, f"trained_base_parameters() names no parameter of the model: {unknown}"


class _NotAValue:
    """A value of no type a config field could mean."""


def input_features(module: nn.Module) -> int:
    """The last input dimension of a Linear-like module."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0]
    features = getattr(module, "in_features", None)
    if not isinstance(features, int):
        pytest.fail(f"no default input for {type(module).__name__}; override module_input")
    return features


def container_and_adapter(key: str, prefix: str) -> str | None:
    """The adapter a state-dict key (relative to a tuner layer) belongs to by the naming rule
    ``<container starting with prefix>.<adapter>[...]``, or None when it is not so named."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[0].startswith(prefix):
        return parts[1]
    return None


def output(module: nn.Module, module_input: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(module_input)


def base_state(layer: TunerLayer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in layer.base_layer.state_dict().items()}


def adapter_state(layer: TunerLayer, prefix: str, adapter_name: str) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().clone()
        for key, value in layer.state_dict().items()
        if container_and_adapter(key, prefix) == adapter_name
    }


def assert_base_restored(layer: TunerLayer, base: dict[str, torch.Tensor], merged: dict[str, torch.Tensor]) -> None:
    """The base weights are back within 1e-5 of their largest magnitude while merged (float32
    rounding of folding an update in and out grows with the update)."""
    magnitude = max([1.0, *(value.abs().max().item() for value in merged.values() if value.is_floating_point())])
    for key, value in layer.base_layer.state_dict().items():
        torch.testing.assert_close(
            value, base[key], atol=1e-5 * magnitude, rtol=0,
            msg=lambda m, key=key: f"base_layer.{key} after unmerge(): {m}",
        )


def assert_trains_only(layer: TunerLayer, prefix: str, adapters: set[str]) -> None:
    wrong = [
        f"{name} (requires_grad={p.requires_grad})"
        for name, p in layer.named_parameters()
        if p.requires_grad != (container_and_adapter(name, prefix) in adapters)
    ]
    assert not wrong, f"after set_adapter({sorted(adapters)}) only their parameters may require grad: {wrong}"


def two_trained_adapters(layer: TunerLayer, module_input: torch.Tensor) -> torch.Tensor:
    """Train :data:`ADAPTER` and :data:`OTHER` one step each towards different targets, and
    return a batch of twice ``module_input``'s rows (forwards, then reversed)."""
    for name, seed in ((ADAPTER, 2), (OTHER, 3)):
        layer.set_adapter([name])
        train_step(layer, module_input, seed=seed)
    return torch.cat([module_input, module_input.flip(0)])


def train_step(module: nn.Module, module_input: torch.Tensor, lr: float = 0.1, seed: int = 2) -> None:
    """One SGD step on a random linear loss, over the parameters that require grad."""
    output = module(module_input)
    target = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    (output * target).sum().backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), "the adapter got no gradient"
    with torch.no_grad():
        for parameter in trainable:
            if parameter.grad is not None:
                parameter -= lr * parameter.grad
                parameter.grad = None
