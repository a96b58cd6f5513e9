"""int8 experts (``moe_quantization="int8"``): the logits equal transformers' with every expert
weight rounded to its int8 grid (so the only error is the rounding's), the error against the
float32 model is reported and bounded, and the memory saved is what the format says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from kernel_core.modeling import MoEOptions
from kernel_core_moe_models.model import SparseMoEModel
from kernel_core_sdk.paged_runner import PagedRunner
from kernel_core_sdk.hf_oracle import hf_logits, max_diff, save_random_model
from moe_oracle import CONFIGS, CPU, TINY, TOLERANCE, hf_model, load_ours, round_to_int8_grid, rounded, sparse_experts

PROMPT_LENGTHS = (40, 17, 6)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(CONFIGS[request.param](), tmp_path_factory.mktemp(request.param))


def load(folder: Path, quantization: str | None) -> SparseMoEModel:
    return load_ours(folder, MoEOptions.select(CPU, quantization=quantization))


def relative_rounding_error(hf: PreTrainedModel) -> float:
    """The largest ``|rounded row - row| / |row|`` (L2) over every expert matrix's rows."""
    worst = 0.0
    for experts in sparse_experts(hf):
        for weight in (experts.gate_up_proj, experts.down_proj):
            change = (round_to_int8_grid(weight) - weight).norm(dim=-1) / weight.norm(dim=-1)
            worst = max(worst, change.max().item())
    return worst


def rerouted(full: PreTrainedModel, on_grid: PreTrainedModel, prompt: list[int]) -> torch.Tensor:
    """``[len]``: whether a position, or one before it (attention reads them), routes to other
    experts on the int8 grid than in float32 in some layer."""
    k = full.config.num_experts_per_tok
    with torch.inference_mode():
        routers = [m(torch.tensor([prompt]), output_router_logits=True).router_logits for m in (full, on_grid)]
    flipped = torch.zeros(len(prompt), dtype=torch.bool)
    for exact, rounded_ in zip(*routers, strict=True):
        flipped |= (exact.topk(k).indices.sort().values != rounded_.topk(k).indices.sort().values).any(-1)
    return flipped.cumsum(0) > 0


@pytest.fixture
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(TINY["vocab_size"], (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def test_int8_logits_equal_transformers_on_the_int8_grid_and_stay_near_float32(
    folder: Path, prompts: list[list[int]]
) -> None:
    full, on_grid = hf_model(folder), rounded(hf_model(folder))
    model = load(folder, "int8")
    ours = PagedRunner(model, model.attention).step(dict(enumerate(prompts)))
    # Bound, first order: each quantized GEMM's output moves by at most epsilon (the largest relative
    # L2 change of a row) of its size; a token's path crosses 2 of them per sparse layer (gate/up and
    # down; its top-k experts' outputs are a convex or sub-convex sum), and the errors add at most
    # linearly up to the logits. Tokens whose routing the rounding flips (a discontinuity: another
    # expert entirely) are outside any such bound; they are counted, and excluded.
    epsilon = relative_rounding_error(full)
    gemms = 2 * len(model.moe_layers)
    checked = 0
    for i, prompt in enumerate(prompts):
        exact = hf_logits(full, prompt)
        assert max_diff(ours[i], hf_logits(on_grid, prompt)) <= TOLERANCE, f"prompt {i}: int8 is not the rounding alone"
        tainted = rerouted(full, on_grid, prompt)
        error = (ours[i] - exact).abs().amax(dim=-1)
        bound = gemms * epsilon * exact.abs().max().item()
        clean = error[~tainted]
        print(f"{folder.name} prompt {i}: int8 vs fp32 max |logit error| {clean.max().item():.2e} on "
              f"{len(clean)} tokens (bound {bound:.2e}, epsilon {epsilon:.4f}); {int(tainted.sum())} tokens "
              f"rerouted or after a rerouted one: max error {error.max().item():.2e}")
        assert 0 < clean.max().item() <= bound, f"prompt {i}"
        checked += len(clean)
    assert checked > sum(map(len, prompts)) // 2, "the rounding rerouted most tokens"

def test_int8_experts_take_a_quarter_of_the_bytes_plus_their_scales(folder: Path) -> None:
    fp32, int8 = load(folder, None), load(folder, "int8")
    assert set(fp32.moe_layers) == set(int8.moe_layers)
    expected_fp32 = expected_int8 = 0
    for layer in fp32.moe_layers.values():
        experts, hidden, size = layer.experts.num_experts, layer.experts.hidden_size, layer.experts.intermediate_size
        weights = experts * 3 * size * hidden
        expected_fp32 += 4 * weights
        expected_int8 += weights + 4 * experts * (2 * size + hidden)  # int8 weights, fp32 scales per row
    assert (fp32.expert_nbytes, int8.expert_nbytes) == (expected_fp32, expected_int8)
    print(f"{folder.name}: experts {fp32.expert_nbytes} B fp32 -> {int8.expert_nbytes} B int8 "
          f"({1 - int8.expert_nbytes / fp32.expert_nbytes:.0%} saved)")
