"""Pytest conformance suites: subclass the one for your plugin's kind in your tests.

Each suite checks registration (API version, valid records, an entry point that imports no
torch) and then the behaviour the kind's contract promises; each class docstring lists the
fixtures to supply. See the README of kernel-core-sdk for an example.
"""

from kernel_core_sdk.conformance._reference import ReferenceAttentionBackend, ReferenceMoEKernel
from kernel_core_sdk.conformance._reference import lora as reference_lora
from kernel_core_sdk.conformance._requests import FakeRequest
from kernel_core_sdk.conformance.attention import AttentionBackendConformance
from kernel_core_sdk.conformance.cache import PREFIX_CACHING, CacheManagerConformance, PrefixCachingConformance
from kernel_core_sdk.conformance.executor import ExecutorConformance
from kernel_core_sdk.conformance.lora import LoRAKernelConformance
from kernel_core_sdk.conformance.model import ModelArchitectureConformance
from kernel_core_sdk.conformance.moe import MoEKernelConformance
from kernel_core_sdk.conformance.platform import PlatformConformance, PlatformContractChecks
from kernel_core_sdk.conformance.prompt import PromptLearningConformance
from kernel_core_sdk.conformance.registration import RegistrationChecks
from kernel_core_sdk.conformance.scheduler import SchedulerConformance
from kernel_core_sdk.conformance.serving import AdapterServingConformance
from kernel_core_sdk.conformance.triton import TritonKernelTests, triton_test_device
from kernel_core_sdk.conformance.tuner import TunerConformance

__all__ = [
    "PREFIX_CACHING",
    "AdapterServingConformance",
    "AttentionBackendConformance",
    "CacheManagerConformance",
    "ExecutorConformance",
    "FakeRequest",
    "LoRAKernelConformance",
    "MoEKernelConformance",
    "ModelArchitectureConformance",
    "PlatformConformance",
    "PlatformContractChecks",
    "PrefixCachingConformance",
    "PromptLearningConformance",
    "ReferenceAttentionBackend",
    "ReferenceMoEKernel",
    "RegistrationChecks",
    "SchedulerConformance",
    "TritonKernelTests",
    "TunerConformance",
    "reference_lora",
    "triton_test_device",
]
