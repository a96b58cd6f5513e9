"""Choosing a platform: forced by name, else the available one with the highest priority."""

from __future__ import annotations

import textwrap

import pytest

from kernel_core.errors import PlatformNotAvailableError
from kernel_core.platforms import ENV_PLATFORM, select_platform

from .conftest import plugin_source

FAKE_PLATFORMS = '''
import torch
from kernel_core.contracts.platform import MemoryInfo, Platform


def make(name, available, broken=False):
    class Fake(Platform):
        device_type = "cpu"

        @classmethod
        def is_available(cls):
            if broken:
                raise RuntimeError("driver exploded")
            return available

        @classmethod
        def unavailable_reason(cls):
            return f"no {name} card in this box"

        def device_count(self):
            return 1

        def device_name(self, index=0):
            return name

        def supported_dtypes(self):
            return (torch.float32,)

        def distributed_backend(self):
            return "gloo"

        def memory_info(self, index=0):
            return MemoryInfo(1, 1)

    Fake.name = name
    return Fake


Here = make("here", True)
AlsoHere = make("also-here", True)
Absent = make("absent", False)
Broken = make("broken", True, broken=True)
'''


def platform(name: str, target: str, priority: int) -> str:
    return f"PlatformSpec(name={name!r}, description='d', implementation='fake_platforms:{target}', priority={priority})"


@pytest.fixture
def install(fake_dist, tmp_path, monkeypatch):
    """Install fake platform plugins; only they are allowed, so real platforms do not interfere."""

    def make(*records: str) -> None:
        site = fake_dist("kc-fake-platforms", "kc_fake_platforms", plugin_source("kernel_core_platforms", ", ".join(records)))
        (site / "fake_platforms.py").write_text(textwrap.dedent(FAKE_PLATFORMS))
        monkeypatch.setenv("KERNEL_CORE_PLUGINS", "kc-fake-platforms")

    return make


def test_highest_priority_available_platform_wins(install):
    install(platform("here", "Here", 10), platform("absent", "Absent", 100), platform("low", "AlsoHere", 0))
    choice = select_platform()
    assert choice.registration.name == "here"
    assert "highest priority (10)" in choice.reason and "here" in choice.reason
    assert {p.registration.name: p.available for p in choice.probes} == {"here": True, "absent": False, "low": True}


def test_falls_back_to_the_lowest_priority_platform(install):
    install(platform("cpu-like", "Here", 0), platform("absent", "Absent", 100))
    assert select_platform().registration.name == "cpu-like"


def test_broken_detection_is_reported_and_skipped(install):
    install(platform("cpu-like", "Here", 0), platform("broken", "Broken", 100))
    choice = select_platform()
    assert choice.registration.name == "cpu-like"
    detail = {p.registration.name: p.detail for p in choice.probes}["broken"]
    assert "driver exploded" in detail


def test_forced_platform_is_used_even_with_lower_priority(install, monkeypatch):
    install(platform("here", "Here", 10), platform("also-here", "AlsoHere", 0))
    monkeypatch.setenv(ENV_PLATFORM, "also-here")
    choice = select_platform()
    assert choice.registration.name == "also-here"
    assert choice.reason == "forced by KERNEL_CORE_PLATFORM=also-here"


def test_forced_absent_platform_fails_clearly(install, monkeypatch):
    install(platform("here", "Here", 0), platform("absent", "Absent", 100))
    monkeypatch.setenv(ENV_PLATFORM, "absent")
    with pytest.raises(PlatformNotAvailableError, match=r"KERNEL_CORE_PLATFORM=absent was requested.*no absent card in this box"):
        select_platform()


def test_forced_unknown_platform_lists_installed_ones(install, monkeypatch):
    install(platform("here", "Here", 0))
    monkeypatch.setenv(ENV_PLATFORM, "tpu")
    with pytest.raises(PlatformNotAvailableError, match=r"KERNEL_CORE_PLATFORM=tpu: no platform plugin named 'tpu'.*available: here"):
        select_platform()


def test_no_platform_available_says_what_was_tried(install):
    install(platform("absent", "Absent", 0))
    with pytest.raises(PlatformNotAvailableError, match=r"no platform is available \(absent: no absent card in this box\)"):
        select_platform()
