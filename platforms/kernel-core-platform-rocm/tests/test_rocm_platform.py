"""The ROCm platform: detection on any machine (torch's build and device queries faked), the
contract checks for real on any machine, the full conformance suite for real on an AMD GPU."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core_platform_rocm import plugin
from kernel_core_platform_rocm.platform import ROCmPlatform
from kernel_core_sdk.conformance.platform import PlatformConformance, PlatformContractChecks


class ROCmPlugin:
    @pytest.fixture
    def platform_class(self) -> type[ROCmPlatform]:
        return ROCmPlatform

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


class TestROCmContract(ROCmPlugin, PlatformContractChecks):
    pass


@pytest.mark.kcore_needs_platform.with_args(ROCmPlatform)
class TestROCmConformance(ROCmPlugin, PlatformConformance):
    pass


@pytest.mark.parametrize(
    ("cuda", "hip", "devices", "available", "reason"),
    [
        (None, "6.4.43482", True, True, None),
        (None, "6.4.43482", False, False, "no ROCm device visible (torch"),
        (None, None, False, False, "was built without ROCm"),
        ("12.8", None, True, False, "is a CUDA build (CUDA 12.8), not ROCm; use the cuda platform"),
    ],
    ids=["rocm-build-with-gpu", "rocm-build-without-gpu", "cpu-build", "cuda-build-with-gpu"],
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
    assert ROCmPlatform.is_available() is available
    if reason is not None:
        assert reason in ROCmPlatform.unavailable_reason()


def test_reason_names_hidden_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", "6.4.43482")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "-1")
    assert "HIP_VISIBLE_DEVICES='-1'" in ROCmPlatform.unavailable_reason()
