"""The CUDA platform: detection on any machine (torch's build and device queries faked), the
contract checks for real on any machine, the full conformance suite for real on an NVIDIA GPU."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core_platform_cuda import plugin
from kernel_core_platform_cuda.platform import CUDAPlatform
from kernel_core_sdk.conformance.platform import PlatformConformance, PlatformContractChecks


class CUDAPlugin:
    @pytest.fixture
    def platform_class(self) -> type[CUDAPlatform]:
        return CUDAPlatform

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


class TestCUDAContract(CUDAPlugin, PlatformContractChecks):
    pass


@pytest.mark.kcore_needs_platform.with_args(CUDAPlatform)
class TestCUDAConformance(CUDAPlugin, PlatformConformance):
    pass


@pytest.mark.parametrize(
    ("cuda", "hip", "devices", "available", "reason"),
    [
        ("12.8", None, True, True, None),
        ("12.8", None, False, False, "no CUDA device visible (torch"),
        (None, None, False, False, "was built without CUDA"),
        (None, "6.4.43482", True, False, "is a ROCm build (HIP 6.4.43482); use the rocm platform"),
    ],
    ids=["cuda-build-with-gpu", "cuda-build-without-gpu", "cpu-build", "rocm-build-with-gpu"],
)
def test_detection(
    monkeypatch: pytest.MonkeyPatch,
    cuda: str | None,
    hip: str | None,
    devices: bool,
    available: bool,
    reason: str | None,
) -> None:
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices)
    assert CUDAPlatform.is_available() is available
    if reason is not None:
        assert reason in CUDAPlatform.unavailable_reason()


def test_reason_names_hidden_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES=''" in CUDAPlatform.unavailable_reason()
