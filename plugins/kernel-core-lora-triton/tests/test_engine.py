"""End to end once: an engine serving two LoRA adapters beside base rows with ``lora_kernel="triton"``
gives the greedy tokens of the same engine with the torch kernel (float32, a tiny random Llama;
the CPU runs the Triton kernels in Triton's interpreter). A kernel named by the setting is used
whatever its record's device types, so the CPU engine takes it when asked; unnamed, the CPU
engine takes the torch kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.contracts.lora import LoRAProjection
from kernel_core.llm import LLM
from kernel_core.peft import get_peft_model
from kernel_core_lora.config import LoraConfig
from kernel_core_lora_torch.kernel import TorchLoRAKernel
from kernel_core_lora_triton.kernel import TritonLoRAKernel
from kernel_core_lora_triton.ops import INTERPRETED
from kernel_core_sdk.conformance.serving import ENGINE, PROMPTS, load_base, make_llm, save_tiny_model, tokens
from kernel_core_sdk.peft_oracle import randomise

#: Two adapters of different ranks and targets (a fused projection's stacked slots included).
ADAPTERS = {
    "first": (11, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    "second": (12, LoraConfig(r=3, lora_alpha=6, target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"])),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("lora-triton-engine")
    base = save_tiny_model(root / "base")
    adapters = {}
    for name, (seed, config) in ADAPTERS.items():
        model = get_peft_model(load_base(base), config)
        randomise(model, seed)
        model.save_pretrained(root / name)
        adapters[name] = root / name
    return base, adapters


def test_engine_with_the_triton_kernel_matches_the_torch_kernel(folders: tuple[Path, dict[str, Path]]) -> None:
    base, adapters = folders
    prompts, names = [*PROMPTS, PROMPTS[0]], ["first", None, "second", "second"]
    results = {}
    for kernel, kernel_class in (("torch", TorchLoRAKernel), ("triton", TritonLoRAKernel)):
        llm = make_llm(base, adapters, dict(ENGINE, lora_kernel=kernel))
        assert kernels_of(llm) == {kernel_class}
        results[kernel] = tokens(llm, prompts, names)
    assert results["triton"] == results["torch"]
    base_tokens = tokens(llm, prompts, [None] * len(prompts))
    assert [a != b for a, b in zip(results["triton"], base_tokens)] == [name is not None for name in names]


def test_the_engine_picks_triton_on_a_gpu_only(folders: tuple[Path, dict[str, Path]]) -> None:
    """With no lora_kernel named, the engine takes the kernel of highest priority for its device."""
    base, _ = folders
    expected = TorchLoRAKernel if INTERPRETED else TritonLoRAKernel
    assert kernels_of(LLM(str(base), **ENGINE)) == {expected}


def kernels_of(llm: LLM) -> set[type]:
    """The classes of the kernels the engine's LoRA serving applies its projections with."""
    projections: list[LoRAProjection] = list(llm.engine.adapters.kinds.servings["LORA"].projections.values())
    assert projections
    return {type(p.kernel) for p in projections}
