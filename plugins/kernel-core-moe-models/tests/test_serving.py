"""The MoE families through the engine (``kernel_core.LLM``): greedy tokens equal transformers'
``generate`` with chunked prefill, prefix-cache hits and preemption; the engine's ``moe_kernel`` and
``moe_quantization`` settings reach the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core import LLM, SamplingParams
from kernel_core.errors import KernelCoreError
from kernel_core_sdk.hf_oracle import hf_greedy
from moe_oracle import hf_model, rounded, save_servable

NEW_TOKENS = 8
#: One per family: top-2 Mixtral, Qwen2-MoE with a shared expert, a dense layer and a window, top-2
#: unrenormalised Qwen3-MoE, top-1 OLMoE with clip_qkv.
SERVED = (
    "mixtral-8x-top2", "qwen2moe-4x-top1-unnorm-dense-layer0-window-6", "qwen3moe-6x-top2-unnorm-biases",
    "olmoe-4x-top1-norm-clip-biases",
)
ENGINES: dict[str, dict[str, Any]] = {
    # 8 tokens a step: prompts prefilled in chunks beside other requests' decodes.
    "chunked-prefill": dict(num_kv_blocks=64, block_size=4, max_num_batched_tokens=8),
    # 14 blocks of 4 cannot hold the three requests at once (29 + 8 tokens alone need 10).
    "preemption": dict(num_kv_blocks=14, block_size=4, max_num_batched_tokens=64),
}


@pytest.fixture(scope="module", params=SERVED)
def folder(request: pytest.FixtureRequest, embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_servable(request.param, embedded_model, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def prompts(folder: Path) -> list[list[int]]:
    """Three prompts, the second sharing the first's first 16 tokens (4 full blocks: a prefix hit)."""
    generator = torch.Generator().manual_seed(2)
    vocab = hf_model(folder).config.vocab_size
    first = torch.randint(vocab, (29,), generator=generator).tolist()
    return [first, first[:16] + torch.randint(vocab, (7,), generator=generator).tolist(),
            torch.randint(vocab, (11,), generator=generator).tolist()]


@pytest.fixture(scope="module")
def expected(folder: Path, prompts: list[list[int]]) -> list[list[int]]:
    model = hf_model(folder)
    return [hf_greedy(model, prompt, NEW_TOKENS) for prompt in prompts]


GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("engine", ENGINES.values(), ids=ENGINES.keys())
def test_engine_greedy_tokens_equal_generate(
    folder: Path, prompts: list[list[int]], expected: list[list[int]], engine: dict[str, Any]
) -> None:
    llm = LLM(str(folder), dtype="float32", **engine)
    cache = llm.engine.components.cache
    for run in ("cold", "warm"):  # the warm run finds the prompts' full blocks cached
        hits = cache.stats().prefix_hits
        outputs = llm.generate(prompts, GREEDY)
        assert [o.outputs[0].token_ids for o in outputs] == expected, f"{run} run"
        assert cache.stats().prefix_hits > hits, f"{run} run: no prefix hit"
    if engine["num_kv_blocks"] < 16:
        assert llm.engine.scheduler.num_preemptions > 0


def test_int8_experts_through_the_engine_equal_generate_on_the_int8_grid(
    folder: Path, prompts: list[list[int]]
) -> None:
    """``moe_quantization="int8"`` reaches the model: its tokens are those of transformers with every
    expert weight rounded to its int8 grid, and its experts take about a quarter of the bytes."""
    on_grid = rounded(hf_model(folder))
    llm = LLM(str(folder), dtype="float32", moe_quantization="int8", **ENGINES["chunked-prefill"])
    outputs = llm.generate(prompts, GREEDY)
    assert [o.outputs[0].token_ids for o in outputs] == [hf_greedy(on_grid, p, NEW_TOKENS) for p in prompts]
    model = llm.engine.components.model
    assert all(moe.experts.gate_up.dtype == torch.int8 for moe in model.moe_layers.values())


def test_moe_kernel_setting_selects_the_kernel_and_an_unknown_one_is_named(folder: Path) -> None:
    llm = LLM(str(folder), dtype="float32", moe_kernel="torch", num_kv_blocks=8)
    assert {type(moe.kernel).__module__ for moe in llm.engine.components.model.moe_layers.values()} == {
        "kernel_core_moe_torch.kernel"
    }
    with pytest.raises(KernelCoreError, match=r"moe_kernel 'no-such-kernel' is not installed; installed MoE kernels: .*torch"):
        LLM(str(folder), dtype="float32", moe_kernel="no-such-kernel", num_kv_blocks=8)
