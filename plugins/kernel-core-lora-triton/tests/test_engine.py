"""End to end once: an engine serving two LoRA adapters beside base rows, its projections' LoRA
kernel replaced by the Triton one, gives the greedy tokens of the same engine with the torch kernel
(float32, a tiny random Llama; the CPU runs the Triton kernels in Triton's interpreter). The
kernel is swapped in rather than named by ``lora_kernel``: on the CPU the engine refuses a kernel
whose record's device types leave the CPU out. Unnamed, the CPU engine takes the torch kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.contracts.lora import LoRAProjection
from kernel_core.contracts.settings import instantiate
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


#: The Triton kernel's smallest tiles: the tiny model's projections (64 to 128 features; stacked
#: ranks of max_lora_rank 16 per fused part) take several of each.
SMALL_TILES = {"block_k": 16, "block_r": 16, "block_n": 16}


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
    """Two engines with the torch kernel; in the second every projection's kernel is then replaced
    by the Triton one (smallest tiles), as a GPU engine would select it: greedy tokens agree."""
    base, adapters = folders
    prompts, names = [*PROMPTS, PROMPTS[0]], ["first", None, "second", "second"]
    settings = dict(ENGINE, lora_kernel="torch")
    expected = tokens(make_llm(base, adapters, settings), prompts, names)
    llm = make_llm(base, adapters, settings)
    triton = instantiate(TritonLoRAKernel, options=SMALL_TILES, plugin="lora-kernel.triton")
    for projection in projections_of(llm):
        projection.kernel = triton
    assert tokens(llm, prompts, names) == expected
    base_tokens = tokens(llm, prompts, [None] * len(prompts))
    assert [a != b for a, b in zip(expected, base_tokens)] == [name is not None for name in names]


def test_the_engine_picks_triton_on_a_gpu_only(folders: tuple[Path, dict[str, Path]]) -> None:
    """With no lora_kernel named, the engine takes the kernel of highest priority for its device."""
    base, _ = folders
    expected = TorchLoRAKernel if INTERPRETED else TritonLoRAKernel
    assert kernels_of(LLM(str(base), **ENGINE)) == {expected}


def projections_of(llm: LLM) -> list[LoRAProjection]:
    projections = list(llm.engine.adapters.kinds.servings["LORA"].projections.values())
    assert projections
    return projections


def kernels_of(llm: LLM) -> set[type]:
    """The classes of the kernels the engine's LoRA serving applies its projections with."""
    return {type(p.kernel) for p in projections_of(llm)}
