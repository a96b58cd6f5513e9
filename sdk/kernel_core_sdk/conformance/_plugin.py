"""What every kind's suite shares: registration checks and the implementation under test."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import pytest
import torch

from kernel_core.contracts.records import ImplementationSpec, PluginKind
from kernel_core.contracts.settings import instantiate, settings_model
from kernel_core_sdk.conformance.registration import RegistrationChecks


class PluginUnderTest(RegistrationChecks):
    """Resolves the implementation a suite exercises from the author's entry-point module.

    A suite sets :attr:`kind` and :attr:`contract`; the author supplies ``plugin_module`` and,
    when that module registers several implementations of the kind, ``plugin_name``.
    """

    kind: ClassVar[PluginKind]
    contract: ClassVar[type]

    @pytest.fixture
    def spec_kind(self) -> PluginKind:
        """The kind of record under test (fixed by the suite)."""
        return self.kind

    @pytest.fixture
    def plugin_name(self) -> str | None:
        """Name of the record under test; None picks the module's only record of the kind."""
        return None

    @pytest.fixture
    def plugin_spec(
        self, records: list[ImplementationSpec], plugin_module: ModuleType, plugin_name: str | None
    ) -> ImplementationSpec:
        """The record under test, among those the module registers."""
        chosen = [r for r in records if plugin_name is None or r.name == plugin_name]
        if len(chosen) != 1:
            names = ", ".join(r.name for r in records) or "none"
            wanted = repr(plugin_name) if plugin_name else "exactly one"
            pytest.fail(
                f"{plugin_module.__name__} registers {self.kind} records [{names}], expected {wanted}; "
                "supply a plugin_name fixture naming the one to test"
            )
        return chosen[0]

    @pytest.fixture
    def implementation(self, plugin_spec: ImplementationSpec) -> Any:
        """The class the record names, imported as the engine would."""
        return plugin_spec.load()

    @pytest.fixture
    def plugin_options(self) -> dict[str, Any]:
        """Settings the suite builds the implementation with, as ``plugin_options["<kind>.<name>"]``
        gives them (plugin API 1.6); override to run the suite at other settings (say, small block sizes)."""
        return {}

    @pytest.fixture
    def construct(
        self, implementation: Any, plugin_spec: ImplementationSpec, plugin_options: dict[str, Any]
    ) -> Callable[..., Any]:
        """Builds the implementation as the engine does: with ``settings=`` its validated ``Settings``
        when it declares one (:func:`kernel_core.contracts.settings.instantiate`)."""
        return functools.partial(
            instantiate, implementation, options=plugin_options, plugin=f"{plugin_spec.kind}.{plugin_spec.name}"
        )

    @pytest.fixture
    def device(self) -> torch.device:
        """Where tensors are placed; override to run the suite on an accelerator."""
        return torch.device("cpu")

    @pytest.fixture
    def device_types(self, plugin_spec: ImplementationSpec) -> frozenset[str]:
        """Devices the suites of attention backends, MoE and LoRA kernels run on, skipping any other
        ``device``: the record's ``device_types``; a Triton kernel's tests add the CPU, where the
        interpreter runs it (:class:`kernel_core_sdk.conformance.triton.TritonKernelTests`)."""
        return plugin_spec.device_types  # type: ignore[attr-defined]

    def test_implementation_subclasses_contract(self, implementation: Any) -> None:
        contract = f"{self.contract.__module__}.{self.contract.__qualname__}"
        assert isinstance(implementation, type) and issubclass(implementation, self.contract), (
            f"{implementation!r} must subclass {contract}"
        )
        assert not inspect.isabstract(implementation), (
            f"{implementation.__qualname__} leaves abstract: {', '.join(sorted(implementation.__abstractmethods__))}"
        )

    def test_settings_have_a_default_for_every_field(self, implementation: Any) -> None:
        """The engine builds a plugin that declares ``Settings`` with no option given: every field
        needs a default, and the model must subclass ``PluginSettings`` (unknown keys refused)."""
        model = settings_model(implementation)  # raises unless a PluginSettings
        if model is None:
            return
        required = [name for name, field in model.model_fields.items() if field.is_required()]
        assert not required, f"{implementation.__qualname__}.Settings fields without a default: {', '.join(required)}"
        model()
