"""Conformance suite for hardware platform plugins.

Subclass :class:`PlatformConformance` in the plugin's tests and supply two fixtures::

    import pytest
    from kernel_core_sdk.conformance.platform import PlatformConformance
    from my_platform import plugin
    from my_platform.platform import MyPlatform

    @pytest.mark.kcore_needs_platform.with_args(MyPlatform)  # deselected where absent
    class TestMyPlatform(PlatformConformance):
        @pytest.fixture
        def platform_class(self):
            return MyPlatform

        @pytest.fixture
        def plugin_module(self):
            return plugin

The full suite computes on the device, so it runs where the hardware is.
:class:`PlatformContractChecks` holds the checks that need no hardware (registration, class
attributes, side-effect-free detection): run that one on every machine, CI included.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from kernel_core.contracts.platform import MemoryInfo, Platform
from kernel_core.contracts.records import NAME_PATTERN, ImplementationSpec, PluginKind
from kernel_core_sdk.conformance.registration import RegistrationChecks, run_fresh_python

#: torch.distributed backends a platform may name; backends that third-party packages register
#: with ``torch.distributed.Backend.register_backend`` (Ascend's ``hccl``, say) count too.
KNOWN_BACKENDS = frozenset({"gloo", "nccl", "xccl", "mpi", "ucc"})


def known_backends() -> frozenset[str]:
    """:data:`KNOWN_BACKENDS` plus every backend registered with this torch."""
    registered = getattr(getattr(torch.distributed, "Backend", None), "backend_list", ())
    return KNOWN_BACKENDS | (frozenset(registered) - {"undefined", "fake"})


class PlatformContractChecks(RegistrationChecks):
    """What every platform must satisfy on any machine, whether its hardware is there or not.

    Needs the fixtures ``platform_class`` (the :class:`Platform` subclass) and ``plugin_module``
    (the imported entry-point module).
    """

    @pytest.fixture
    def spec_kind(self) -> PluginKind:
        return PluginKind.PLATFORM

    def test_subclasses_platform(self, platform_class: type[Platform]) -> None:
        assert isinstance(platform_class, type) and issubclass(platform_class, Platform)
        assert not inspect.isabstract(platform_class), (
            f"{platform_class.__qualname__} leaves abstract: "
            + ", ".join(sorted(platform_class.__abstractmethods__))
        )

    def test_names_are_set(self, platform_class: type[Platform]) -> None:
        assert re.fullmatch(NAME_PATTERN, platform_class.name), platform_class.name
        assert torch.device(platform_class.device_type).type == platform_class.device_type

    def test_default_attention_backend_is_named(self, platform_class: type[Platform]) -> None:
        backend = platform_class.default_attention_backend
        assert isinstance(backend, str) and backend.strip()

    def test_records_name_this_class(
        self, records: list[ImplementationSpec], platform_class: type[Platform]
    ) -> None:
        mine = [record for record in records if record.load() is platform_class]
        assert mine, (
            f"no record's implementation loads to {platform_class.__qualname__}: "
            + ", ".join(record.implementation for record in records)
        )
        assert [record.name for record in mine] == [platform_class.name]

    def test_is_available_is_a_stable_bool(self, platform_class: type[Platform]) -> None:
        first = platform_class.is_available()
        assert isinstance(first, bool), f"is_available() returned {first!r}, not a bool"
        assert platform_class.is_available() is first, "is_available() changed its answer"

    def test_unavailable_reason_is_text(self, platform_class: type[Platform]) -> None:
        reason = platform_class.unavailable_reason()
        assert isinstance(reason, str) and reason.strip()

    def test_detection_initialises_no_device(self, platform_class: type[Platform]) -> None:
        # In a fresh process: here the device may already be initialised by other tests.
        result = run_fresh_python(
            "import importlib, sys, torch\n"
            f"device_module = getattr(torch, {platform_class.device_type!r}, None)\n"
            "initialized = getattr(device_module, 'is_initialized', lambda: None)\n"
            "before = initialized()\n"
            f"cls = getattr(importlib.import_module({platform_class.__module__!r}), "
            f"{platform_class.__qualname__!r})\n"
            "cls.is_available()\n"
            "cls.unavailable_reason()\n"
            "sys.exit(0 if initialized() == before else 'detection initialised the device')\n"
        )
        assert result.returncode == 0, result.stderr.strip()


class PlatformConformance(PlatformContractChecks):
    """The whole suite: the contract checks, then the platform at work on its hardware.

    Where the hardware is absent every hardware check fails, saying so: mark the subclass
    ``pytest.mark.kcore_needs_platform.with_args(YourPlatform)`` so that it runs only there.
    """

    @pytest.fixture
    def platform(self, platform_class: type[Platform]) -> Platform:
        if not platform_class.is_available():
            pytest.fail(
                f"the {platform_class.name} platform is not available here "
                f"({platform_class.unavailable_reason()}); mark the test class with "
                f"pytest.mark.kcore_needs_platform.with_args({platform_class.__qualname__})"
            )
        return platform_class()

    def test_sees_devices(self, platform: Platform) -> None:
        count = platform.device_count()
        assert isinstance(count, int) and count >= 1

    def test_devices_are_of_its_type_and_named(self, platform: Platform) -> None:
        for index in range(platform.device_count()):
            device = platform.device(index)
            assert isinstance(device, torch.device) and device.type == platform.device_type
            name = platform.device_name(index)
            assert isinstance(name, str) and name.strip(), f"device_name({index}) returned {name!r}"

    def test_tensor_computes_on_device(self, platform: Platform) -> None:
        a = torch.arange(6, dtype=torch.float32, device=platform.device()).reshape(2, 3)
        product = a @ a.T + 1
        assert product.device.type == platform.device_type
        assert torch.equal(product.cpu(), torch.tensor([[6.0, 15.0], [15.0, 51.0]]))

    def test_supported_dtypes_are_floating(self, platform: Platform) -> None:
        dtypes = platform.supported_dtypes()
        assert isinstance(dtypes, tuple) and dtypes, f"expected a non-empty tuple, got {dtypes!r}"
        floating = all(isinstance(dtype, torch.dtype) and dtype.is_floating_point for dtype in dtypes)
        assert floating, f"not all floating torch dtypes: {dtypes}"
        assert len(set(dtypes)) == len(dtypes), dtypes

    def test_every_supported_dtype_computes(self, platform: Platform) -> None:
        for dtype in platform.supported_dtypes():
            ones = torch.ones(4, 4, dtype=dtype, device=platform.device())
            # 4x4 ones squared sums to 64, exact in every floating dtype.
            assert (ones @ ones).sum().item() == 64, dtype

    def test_linear_policy_computes_the_product(self, platform: Platform) -> None:
        """The GEMM policy (plugin API 1.5) in every supported dtype, on a weight it prepared and on a
        plain one: entries in {-1, 0, 1} over 32 terms, so every summation order gives the exact sums."""
        policy = platform.linear_policy()
        generator = torch.Generator().manual_seed(0)
        x, weight = (torch.randint(-1, 2, shape, generator=generator) for shape in ((5, 32), (24, 32)))
        bias = torch.randint(-1, 2, (24,), generator=generator)
        expected = (x @ weight.T + bias).double()
        for dtype in platform.supported_dtypes():
            w = weight.to(dtype=dtype, device=platform.device())
            prepared = policy.prepare(w)
            assert (prepared.shape, prepared.dtype, prepared.device) == (w.shape, w.dtype, w.device), dtype
            for operand in (prepared, w):
                out = policy.linear(x.to(w), operand, bias.to(w))
                assert out.shape == (5, 24) and out.dtype == dtype, (dtype, out.shape, out.dtype)
                assert torch.equal(out.cpu().double(), expected), f"{policy.name} in {dtype}"

    def test_distributed_backend_is_known(self, platform: Platform) -> None:
        backend = platform.distributed_backend()
        assert backend in known_backends(), f"{backend!r} is not a torch.distributed backend"
        is_backend_available = getattr(torch.distributed, "is_backend_available", None)
        if is_backend_available is not None:
            assert is_backend_available(backend), f"this torch was built without {backend!r}"

    def test_memory_info_is_sane(self, platform: Platform) -> None:
        for index in range(platform.device_count()):
            info = platform.memory_info(index)
            assert isinstance(info, MemoryInfo)
            assert isinstance(info.total_bytes, int) and isinstance(info.free_bytes, int)
            assert info.total_bytes > 0
            assert 0 <= info.free_bytes <= info.total_bytes, info
