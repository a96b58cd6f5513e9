"""The public MoE block: expert weights stacked from per-expert or 3-D tensors (int8 at load),
outputs equal to transformers' Mixtral and Qwen2-MoE blocks, clear errors naming the field, and
the kernel selection the engine hands a model."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import kernel_core
from kernel_core.contracts.moe import PreparedExperts, dequantize_int8
from kernel_core.contracts.records import MoEKernelSpec
from kernel_core.errors import InvalidModelFolderError, PluginError, UnknownPluginError
from kernel_core.modeling.moe import ExpertWeights, FusedMoE, MoEOptions
from kernel_core_sdk.conformance import ReferenceMoEKernel

EXPERTS, HIDDEN, INTERMEDIATE = 4, 16, 8
CPU = torch.device("cpu")


def per_expert(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(gate, up, down) per expert, as Hugging Face checkpoints store them."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(INTERMEDIATE, HIDDEN, generator=generator),
            torch.randn(INTERMEDIATE, HIDDEN, generator=generator),
            torch.randn(HIDDEN, INTERMEDIATE, generator=generator),
        )
        for _ in range(EXPERTS)
    ]


def from_experts(experts, **kwargs) -> ExpertWeights:
    options = dict(num_experts=EXPERTS, quantization=None, dtype=torch.float32, device=CPU) | kwargs
    return ExpertWeights.from_experts(experts, **options)


# -- expert weights ------------------------------------------------------------------------------


def test_per_expert_tensors_are_stacked_gate_rows_then_up_rows() -> None:
    experts = per_expert()
    weights = from_experts(iter(experts), dtype=torch.bfloat16)  # a generator, read once
    assert weights.gate_up.shape == (EXPERTS, 2 * INTERMEDIATE, HIDDEN) and weights.gate_up.dtype == torch.bfloat16
    for e, (gate, up, down) in enumerate(experts):
        assert torch.equal(weights.gate_up[e], torch.cat((gate, up)).bfloat16())
        assert torch.equal(weights.down[e], down.bfloat16())
    assert weights.scales() == {}
    assert weights.nbytes == 2 * (2 * INTERMEDIATE * HIDDEN + HIDDEN * INTERMEDIATE) * EXPERTS
    assert (weights.num_experts, weights.hidden_size, weights.intermediate_size) == (EXPERTS, HIDDEN, INTERMEDIATE)


def test_stacked_tensors_give_the_same_weights() -> None:
    experts = per_expert()
    gate_up = torch.stack([torch.cat((gate, up)) for gate, up, _ in experts])
    down = torch.stack([d for _, _, d in experts])
    stacked = ExpertWeights.from_stacked(gate_up, down, quantization=None, dtype=torch.float32, device=CPU)
    listed = from_experts(experts)
    assert torch.equal(stacked.gate_up, listed.gate_up) and torch.equal(stacked.down, listed.down)


def test_int8_keeps_only_int8_weights_and_scales_within_half_a_step() -> None:
    experts = per_expert()
    full = from_experts(experts)
    quantized = from_experts(experts, quantization="int8")
    assert quantized.gate_up.dtype == quantized.down.dtype == torch.int8
    scales = quantized.scales()
    assert scales["w_gate_up_scale"].shape == (EXPERTS, 2 * INTERMEDIATE)
    assert scales["w_down_scale"].shape == (EXPERTS, HIDDEN)
    for q, scale, real in ((quantized.gate_up, quantized.gate_up_scale, full.gate_up),
                           (quantized.down, quantized.down_scale, full.down)):
        step = scale[..., None]
        assert ((dequantize_int8(q, scale, torch.float32) - real).abs() <= step / 2 + 1e-6).all()
    # int8 weights (1 byte) plus one float32 scale per output channel, against float32 weights.
    channels = EXPERTS * (2 * INTERMEDIATE + HIDDEN)
    assert quantized.nbytes == full.nbytes // 4 + 4 * channels


@pytest.mark.parametrize(
    ("experts", "message"),
    [
        (lambda e: e[:3], "got 3 experts, expected num_experts (4)"),
        (lambda e: [*e, e[0]], "more experts than num_experts (4)"),
        (
            lambda e: [*e[:2], (e[2][0], e[2][1][:, :-1], e[2][2]), e[3]],
            "expert 2 up has shape (8, 15), expected (8, 16)",
        ),
        (lambda e: [*e[:3], (e[3][0], e[3][1], e[3][2].T)], "expert 3 down has shape (8, 16), expected (16, 8)"),
        (lambda e: [(e[0][0][0], *e[0][1:]), *e[1:]], "expert 0 gate has shape (16,), expected [intermediate, hidden]"),
    ],
    ids=["too-few", "too-many", "up-shape", "down-transposed", "gate-1d"],
)
def test_bad_expert_tensors_are_refused_naming_the_expert(experts, message: str) -> None:
    with pytest.raises(InvalidModelFolderError, match=r"^model\.layers\.1\.mlp\.experts: ") as caught:
        from_experts(experts(per_expert()), name="model.layers.1.mlp.experts")
    assert message in str(caught.value)


def test_bad_stacked_shapes_and_settings_are_refused_naming_them() -> None:
    gate_up, down = torch.zeros(EXPERTS, 2 * INTERMEDIATE, HIDDEN), torch.zeros(EXPERTS, HIDDEN, INTERMEDIATE)
    options = dict(quantization=None, dtype=torch.float32, device=CPU)
    with pytest.raises(InvalidModelFolderError, match=r"gate_up has shape \(4, 15, 16\)"):
        ExpertWeights.from_stacked(gate_up[:, 1:], down, **options)
    with pytest.raises(InvalidModelFolderError, match=r"down has shape \(3, 16, 8\), expected \(4, 16, 8\)"):
        ExpertWeights.from_stacked(gate_up, down[1:], **options)
    with pytest.raises(ValueError, match="quantization 'int4' is not one of"):
        ExpertWeights.from_stacked(gate_up, down, **(options | {"quantization": "int4"}))
    with pytest.raises(InvalidModelFolderError, match="num_experts 0 must be at least 1"):
        from_experts([], num_experts=0)
    with pytest.raises(ValueError, match="quantization 'fp8'"):
        MoEOptions(ReferenceMoEKernel(), "fp8")


# -- the block against transformers --------------------------------------------------------------


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_mixtral_block_matches_transformers(quantization: str | None) -> None:
    """top-2 of 4, renormalised; with int8 experts, against HF on the dequantized weights."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(0)
    config = MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS,
                           num_experts_per_tok=2)
    config._experts_implementation = "eager"
    hf = MixtralSparseMoeBlock(config).eval()
    for parameter in hf.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    experts = ExpertWeights.from_stacked(
        hf.experts.gate_up_proj.detach(), hf.experts.down_proj.detach(), quantization=quantization,
        dtype=torch.float32, device=CPU,
    )
    block = FusedMoE(hf.gate.weight.detach(), experts, top_k=2, renormalize=True, kernel=ReferenceMoEKernel())
    if quantization:  # HF on exactly the weights the block holds
        hf.experts.gate_up_proj.data = dequantize_int8(experts.gate_up, experts.gate_up_scale, torch.float32)
        hf.experts.down_proj.data = dequantize_int8(experts.down, experts.down_scale, torch.float32)
    x = torch.randn(9, HIDDEN)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), hf(x[None])[0], atol=1e-5, rtol=1e-5)
    assert block.nbytes == experts.nbytes


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_qwen2_moe_block_with_its_shared_expert_matches_transformers(norm_topk_prob: bool) -> None:
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    torch.manual_seed(1)
    config = Qwen2MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE, num_experts=EXPERTS,
                            num_experts_per_tok=3, shared_expert_intermediate_size=12, norm_topk_prob=norm_topk_prob)
    config._experts_implementation = "eager"
    hf = Qwen2MoeSparseMoeBlock(config).eval()
    for parameter in hf.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    experts = ExpertWeights.from_experts(
        ((w[:INTERMEDIATE], w[INTERMEDIATE:], d) for w, d in zip(hf.experts.gate_up_proj.detach(),
                                                                  hf.experts.down_proj.detach())),
        num_experts=EXPERTS, quantization=None, dtype=torch.float32, device=CPU,
    )
    block = FusedMoE(
        hf.gate.weight.detach(), experts, top_k=3, renormalize=norm_topk_prob, kernel=ReferenceMoEKernel(),
        shared_expert=hf.shared_expert, shared_expert_gate=hf.shared_expert_gate.weight.detach(),
    )
    x = torch.randn(6, HIDDEN)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), hf(x[None])[0], atol=1e-5, rtol=1e-5)


class DoublingKernel(ReferenceMoEKernel):
    """Prepares the experts as twice their weights (so the output shows which form was used), and
    says whether it still reads the stacked ones."""

    def __init__(self, reads_stacked: bool) -> None:
        self.reads_stacked = reads_stacked
        self.seen: list[torch.Tensor] = []

    def prepare(self, w_gate_up, w_down, **scales):
        return PreparedExperts((2 * w_gate_up, 2 * w_down), reads_stacked=self.reads_stacked)

    def forward(self, hidden, router_logits, w_gate_up, w_down, top_k, renormalize=True, *, prepared=None, **scales):
        self.seen.append(w_gate_up)
        return super().forward(hidden, router_logits, *prepared, top_k, renormalize, **scales)


@pytest.mark.parametrize("reads_stacked", [True, False], ids=["keeps-stacked", "frees-stacked"])
def test_a_kernels_prepared_experts_reach_every_forward_and_may_free_the_stacked_ones(reads_stacked: bool) -> None:
    experts = from_experts(per_expert())
    router = torch.randn(EXPERTS, HIDDEN, generator=torch.Generator().manual_seed(1))
    kernel = DoublingKernel(reads_stacked)
    block = FusedMoE(router, experts, top_k=2, renormalize=True, kernel=kernel)
    doubled = FusedMoE(router, ExpertWeights(2 * experts.gate_up, 2 * experts.down), top_k=2, renormalize=True,
                       kernel=ReferenceMoEKernel())
    x = torch.randn(5, HIDDEN)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), doubled(x), atol=0, rtol=0)
    (seen,) = kernel.seen
    assert seen.shape == experts.gate_up.shape and seen.dtype == experts.gate_up.dtype
    assert seen.is_meta is not reads_stacked  # freed: the layer keeps shapes and dtypes only
    assert block.nbytes == experts.nbytes


def test_a_kernel_of_api_1_3_without_prepare_still_serves() -> None:
    """A kernel plugin written before ``prepare`` existed, not subclassing MoEKernel (duck-typed)."""

    class DuckKernel:
        def forward(self, hidden, router_logits, w_gate_up, w_down, top_k, renormalize=True, **scales):
            return ReferenceMoEKernel().forward(hidden, router_logits, w_gate_up, w_down, top_k, renormalize, **scales)

    experts = from_experts(per_expert())
    router = torch.randn(EXPERTS, HIDDEN, generator=torch.Generator().manual_seed(1))
    block = FusedMoE(router, experts, top_k=2, renormalize=True, kernel=DuckKernel())
    reference = FusedMoE(router, experts, top_k=2, renormalize=True, kernel=ReferenceMoEKernel())
    x = torch.randn(5, HIDDEN)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), reference(x), atol=0, rtol=0)
    assert block.prepared is None


def test_block_settings_are_checked_naming_the_field() -> None:
    experts = from_experts(per_expert())
    router = torch.zeros(EXPERTS, HIDDEN)
    kernel = ReferenceMoEKernel()
    for top_k in (0, EXPERTS + 1):
        with pytest.raises(InvalidModelFolderError, match=rf"^layer 3: top_k {top_k} must be between 1 and"):
            FusedMoE(router, experts, top_k=top_k, renormalize=True, kernel=kernel, name="layer 3")
    with pytest.raises(InvalidModelFolderError, match=r"router has shape \(3, 16\), expected \(4, 16\)"):
        FusedMoE(router[1:], experts, top_k=2, renormalize=True, kernel=kernel)
    with pytest.raises(InvalidModelFolderError, match="shared_expert_gate"):
        FusedMoE(router, experts, top_k=2, renormalize=True, kernel=kernel, shared_expert_gate=torch.zeros(1, HIDDEN))
    with pytest.raises(InvalidModelFolderError, match=r"shared_expert_gate \(shape \(2, 16\)\)"):
        FusedMoE(router, experts, top_k=2, renormalize=True, kernel=kernel,
                 shared_expert=lambda x: x, shared_expert_gate=torch.zeros(2, HIDDEN))


# -- kernel selection ----------------------------------------------------------------------------


#: Kernels the selection tests register: (name, device types, quantizations, priority).
KERNELS = [("fast-gpu", {"cuda"}, {"int8"}, 10), ("plain", {"cpu", "cuda"}, set(), 5), ("quant", {"cpu"}, {"int8"}, 0)]


@pytest.fixture
def manager(kcore_plugin_manager, kcore_register, monkeypatch: pytest.MonkeyPatch):
    """A manager holding :data:`KERNELS`, each its own class (named after the record) in an
    importable module, so that the selected kernel says which record was chosen."""
    module = types.ModuleType("kc_test_moe_kernels")
    module.kernel_core_api = "1.3"
    for name, *_ in KERNELS:
        setattr(module, name.replace("-", "_"), type(name, (ReferenceMoEKernel,), {}))
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @kernel_core.hookimpl
    def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
        return [
            MoEKernelSpec(
                name=name, description="reference", device_types=frozenset(devices),
                quantizations=frozenset(quantizations), priority=priority,
                implementation=f"{module.__name__}:{name.replace('-', '_')}",
            )
            for name, devices, quantizations, priority in KERNELS
        ]

    module.kernel_core_moe_kernels = kernel_core_moe_kernels
    kcore_register(module)
    return kcore_plugin_manager


@pytest.mark.parametrize(
    ("device", "quantization", "kernel", "expected"),
    [
        ("cpu", None, None, "plain"),
        ("cpu", "int8", None, "quant"),
        ("cuda", None, None, "fast-gpu"),
        ("cuda", "int8", None, "fast-gpu"),
        ("cpu", None, "quant", "quant"),
        ("cpu", "int8", "quant", "quant"),
    ],
)
def test_selection_by_name_else_priority_among_kernels_fitting_device_and_quantization(
    manager, device: str, quantization: str | None, kernel: str | None, expected: str
) -> None:
    options = MoEOptions.select(torch.device(device), kernel=kernel, quantization=quantization, manager=manager)
    assert type(options.kernel).__name__ == expected and options.quantization == quantization


@pytest.mark.parametrize(
    ("kernel", "quantization", "device", "error", "message"),
    [
        ("nope", None, "cpu", UnknownPluginError, "moe_kernel 'nope' is not installed; installed MoE kernels: "
         "fast-gpu (on cuda; quantizations: int8), plain (on cpu/cuda; quantizations: none), "
         "quant (on cpu; quantizations: int8)"),
        ("fast-gpu", None, "cpu", PluginError, "moe_kernel 'fast-gpu' does not run on cpu (it runs on cuda)"),
        ("plain", "int8", "cpu", PluginError, "moe_quantization 'int8': moe_kernel 'plain' does not consume int8"),
        (None, "int8", "xpu", UnknownPluginError, "no installed MoE kernel runs on xpu with moe_quantization 'int8'"),
        (None, "int4", "cpu", ValueError, "moe_quantization 'int4' is not one of ['int8'] or None"),
    ],
    ids=["unknown-name", "wrong-device", "no-int8", "nothing-fits", "unknown-quantization"],
)
def test_selection_errors_name_the_setting_and_the_installed_kernels(
    manager, kernel: str | None, quantization: str | None, device: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        MoEOptions.select(torch.device(device), kernel=kernel, quantization=quantization, manager=manager)
    assert message in str(caught.value)
