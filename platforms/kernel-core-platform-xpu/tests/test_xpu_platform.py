"""The XPU platform: detection on any machine (torch's build and device queries faked), the
contract checks for real on any machine, the full conformance suite for real on an Intel GPU."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core_platform_xpu import plugin
from kernel_core_platform_xpu.platform import XPUPlatform
from kernel_core_sdk.conformance.platform import PlatformConformance, PlatformContractChecks


class XPUPlugin:
    @pytest.fixture
    def platform_class(self) -> type[XPUPlatform]:
        return XPUPlatform

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


class TestXPUContract(XPUPlugin, PlatformContractChecks):
    pass


@pytest.mark.kcore_needs_platform.with_args(XPUPlatform)
class TestXPUConformance(XPUPlugin, PlatformConformance):
    pass


@pytest.mark.parametrize(
    ("xpu", "devices", "available", "reason"),
    [
        ("20250101", True, True, None),
        ("20250101", False, False, "no XPU device visible (torch"),
        (None, False, False, "was built without XPU support"),
    ],
    ids=["xpu-build-with-gpu", "xpu-build-without-gpu", "build-without-xpu"],
)
def test_detection(
    monkeypatch: pytest.MonkeyPatch, xpu: str | None, devices: bool, available: bool, reason: str | None
) -> None:
    monkeypatch.setattr(torch.version, "xpu", xpu)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: devices)
    assert XPUPlatform.is_available() is available
    if reason is not None:
        assert reason in XPUPlatform.unavailable_reason()


def test_unavailable_without_torch_xpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "xpu")
    assert XPUPlatform.is_available() is False
    assert "has no torch.xpu module" in XPUPlatform.unavailable_reason()


def test_reason_names_hidden_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "xpu", "20250101")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setenv("ZE_AFFINITY_MASK", "")
    assert "ZE_AFFINITY_MASK=''" in XPUPlatform.unavailable_reason()
