"""Conformance suite for tuners (PEFT methods)."""

from __future__ import annotations

from collections.abc import Callable

import pydantic
import pytest
import torch
from torch import nn

from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.tuner import Tuner, TunerConfig, TunerLayer
from kernel_core_sdk.conformance._plugin import PluginUnderTest

#: Modules every tuner is offered; tests of one it cannot wrap are skipped.
CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(16, 8),
    "linear-no-bias": lambda: nn.Linear(16, 8, bias=False),
    "embedding": lambda: nn.Embedding(10, 16),
}
ADAPTER = "default"


class TunerConformance(PluginUnderTest):
    """Subclass as ``TestMyTuner(TunerConformance)`` to check a tuner plugin.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the tuner's record name, when the module registers several.

    Fixtures you may override:

    - ``tuner``: the instance under test; defaults to the class called with no arguments.
    - ``tuner_config``: a valid config; defaults to ``config_class()`` (override when a field
      is required).
    - ``candidate_module`` and ``module_input``: the modules offered to ``wrap`` (by default
      ``nn.Linear`` with and without bias, and ``nn.Embedding``; tests skip the ones
      ``can_wrap`` declines) and an input for one.
    - ``rejected_module``: a module ``can_wrap`` must decline (default ``nn.LayerNorm``).
    """

    kind = PluginKind.TUNER
    contract = Tuner

    @pytest.fixture
    def tuner(self, implementation: type[Tuner]) -> Tuner:
        return implementation()

    @pytest.fixture
    def tuner_config(self, tuner: Tuner) -> TunerConfig:
        return tuner.config_class()

    @pytest.fixture(params=sorted(CANDIDATES))
    def candidate_module(self, request: pytest.FixtureRequest) -> nn.Module:
        torch.manual_seed(0)
        return CANDIDATES[request.param]()

    @pytest.fixture
    def module_input(self, candidate_module: nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        if isinstance(candidate_module, nn.Embedding):
            return torch.randint(candidate_module.num_embeddings, (3, 5), generator=generator)
        return torch.randn(3, 5, candidate_module.in_features, generator=generator)

    @pytest.fixture
    def rejected_module(self) -> nn.Module:
        return nn.LayerNorm(16)

    @pytest.fixture
    def wrapped(self, tuner: Tuner, tuner_config: TunerConfig, candidate_module: nn.Module) -> nn.Module:
        if not tuner.can_wrap(candidate_module):
            pytest.skip(
                f"does not wrap {type(candidate_module).__name__}; override candidate_module to test what it wraps"
            )
        return tuner.wrap(candidate_module, ADAPTER, tuner_config)

    # -- config and identity -----------------------------------------------------------------

    def test_config_class_is_a_tuner_config(self, tuner: Tuner, tuner_config: TunerConfig) -> None:
        assert issubclass(tuner.config_class, TunerConfig)
        assert isinstance(tuner_config, tuner.config_class)

    def test_config_rejects_unknown_fields(self, tuner: Tuner, tuner_config: TunerConfig) -> None:
        with pytest.raises(pydantic.ValidationError):
            tuner.config_class(**tuner_config.model_dump(), surely_not_a_field=1)

    def test_prefix_is_named(self, tuner: Tuner) -> None:
        assert isinstance(tuner.prefix, str) and tuner.prefix.strip()

    def test_declines_unsupported_modules(self, tuner: Tuner, rejected_module: nn.Module) -> None:
        assert tuner.can_wrap(rejected_module) is False

    # -- the wrapped module --------------------------------------------------------------------

    def test_only_adapter_parameters_train(self, tuner: Tuner, wrapped: nn.Module) -> None:
        assert isinstance(wrapped, TunerLayer) and wrapped.merged is False
        trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
        assert trainable, "the adapter has no trainable parameter"
        stray = [name for name in trainable if tuner.prefix not in name]
        assert not stray, f"trainable parameters without the prefix {tuner.prefix!r}: {stray}"

    def test_forward_keeps_the_output_shape(
        self, tuner: Tuner, tuner_config: TunerConfig, candidate_module: nn.Module, module_input: torch.Tensor
    ) -> None:
        if not tuner.can_wrap(candidate_module):
            pytest.skip(f"does not wrap {type(candidate_module).__name__}")
        with torch.no_grad():
            base_shape = candidate_module(module_input).shape
            assert tuner.wrap(candidate_module, ADAPTER, tuner_config)(module_input).shape == base_shape

    def test_training_step_changes_the_output(
        self, tuner: Tuner, wrapped: nn.Module, module_input: torch.Tensor
    ) -> None:
        with torch.no_grad():
            before = wrapped(module_input)
        train_step(wrapped, module_input)
        frozen_with_grad = [n for n, p in wrapped.named_parameters() if tuner.prefix not in n and p.grad is not None]
        assert not frozen_with_grad, f"base parameters received gradients: {frozen_with_grad}"
        with torch.no_grad():
            assert not torch.allclose(wrapped(module_input), before), "a gradient step left the output unchanged"

    def test_merge_matches_and_unmerge_restores(
        self, tuner: Tuner, wrapped: nn.Module, module_input: torch.Tensor
    ) -> None:
        train_step(wrapped, module_input)  # so that the adapter is not the identity
        base = {n: p.detach().clone() for n, p in wrapped.named_parameters() if tuner.prefix not in n}
        with torch.no_grad():
            unmerged = wrapped(module_input)

        wrapped.merge()
        assert wrapped.merged is True
        merged_base = dict(wrapped.named_parameters())
        assert any(not torch.equal(merged_base[n].detach(), base[n]) for n in base), (
            "merge() must fold the adapter into the base weights"
        )
        with torch.no_grad():
            torch.testing.assert_close(wrapped(module_input), unmerged, atol=1e-5, rtol=1e-5)

        wrapped.unmerge()
        assert wrapped.merged is False
        for name, parameter in wrapped.named_parameters():
            if name in base:
                torch.testing.assert_close(
                    parameter.detach(), base[name], atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
                )
        with torch.no_grad():
            torch.testing.assert_close(wrapped(module_input), unmerged, atol=1e-5, rtol=1e-5)


def train_step(module: nn.Module, module_input: torch.Tensor, lr: float = 0.1) -> None:
    """One SGD step on a random linear loss, over the parameters that require grad."""
    output = module(module_input)
    target = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    (output * target).sum().backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), "the adapter got no gradient"
    with torch.no_grad():
        for parameter in trainable:
            if parameter.grad is not None:
                parameter -= lr * parameter.grad
                parameter.grad = None
