"""Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE against Hugging Face transformers, the oracle: logits within
1e-4 (fp32) and identical greedy tokens, over one step, flattened batches, chunked prefill and
decode, on the default MoE kernel and on the SDK's per-token reference kernel; both checkpoint
layouts; the SDK's conformance suite per family."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from kernel_core.contracts.attention import AttentionBackend
from kernel_core.modeling import MoEOptions
from kernel_core_moe_models import plugin
from kernel_core_moe_models.model import MixtralModel, OlmoeModel, Qwen2MoeModel, Qwen3MoeModel, SparseMoEModel
from kernel_core_sdk.conformance import ModelArchitectureConformance, ReferenceAttentionBackend, ReferenceMoEKernel
from kernel_core_sdk.paged_runner import PagedRunner, greedy
from kernel_core_sdk.hf_oracle import hf_greedy, hf_logits, max_diff, save_random_model
from moe_oracle import CONFIGS, CPU, TINY, TOLERANCE, hf_model, load_ours

PROMPT_LENGTHS = (13, 5, 22)
CLASSES: set[type[SparseMoEModel]] = {MixtralModel, Qwen2MoeModel, Qwen3MoeModel, OlmoeModel}
load = load_ours


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(CONFIGS[request.param](), tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def hf(folder: Path) -> PreTrainedModel:
    return hf_model(folder)


@pytest.fixture(params=["default-kernel", "reference-kernel"])
def moe(request: pytest.FixtureRequest) -> MoEOptions:
    """The kernel the engine selects on the CPU (kernel-core-moe-torch), and the SDK's per-token
    reference (the model's own arithmetic apart from any kernel plugin)."""
    if request.param == "default-kernel":
        return MoEOptions.select(CPU)
    return MoEOptions(ReferenceMoEKernel())


@pytest.fixture
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(TINY["vocab_size"], (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def test_prompts_flattened_into_one_step_match_transformers(
    folder: Path, hf: PreTrainedModel, moe: MoEOptions, prompts: list[list[int]]
) -> None:
    attention = ReferenceAttentionBackend()
    logits = PagedRunner(load(folder, moe, attention), attention).step(dict(enumerate(prompts)))
    for i, prompt in enumerate(prompts):
        assert max_diff(logits[i], hf_logits(hf, prompt)) <= TOLERANCE, f"prompt {i}"


def test_chunked_prefill_then_greedy_decode_match_generate(
    folder: Path, hf: PreTrainedModel, prompts: list[list[int]]
) -> None:
    attention = ReferenceAttentionBackend()
    logits, generated = greedy(PagedRunner(load(folder, None, attention), attention), prompts, 6, chunk_size=5)
    for i, prompt in enumerate(prompts):
        assert max_diff(logits[i], hf_logits(hf, prompt)) <= TOLERANCE, f"prompt {i}"
        assert generated[i] == hf_greedy(hf, prompt, 6), f"prompt {i}"


def test_sparse_and_dense_layers_are_as_in_transformers(folder: Path, hf: PreTrainedModel) -> None:
    model = load(folder)
    sparse = {i for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "experts")}
    assert set(model.moe_layers) == sparse and sparse
    for i, moe_layer in model.moe_layers.items():
        assert moe_layer.top_k == hf.config.num_experts_per_tok
        assert (moe_layer.shared_expert is not None) == hasattr(hf.model.layers[i].mlp, "shared_expert")


def test_weight_slices_address_every_hf_parameter(folder: Path, hf: PreTrainedModel) -> None:
    model = load(folder)
    for name, parameter in hf.state_dict().items():
        tensor, rows = model.weight_slices[name]
        assert torch.equal(tensor[rows], parameter), name


def test_fused_checkpoint_layout_loads_like_the_hub_one(folder: Path, hf: PreTrainedModel, tmp_path: Path) -> None:
    """transformers 5's run-time names (``mlp.experts.gate_up_proj`` ``[E, 2I, H]``), as a checkpoint
    saved without its conversion back to per-expert tensors stores them."""
    fused = tmp_path / "fused"
    fused.mkdir()
    save_file({name: t.contiguous() for name, t in hf.state_dict().items()}, fused / "model.safetensors")
    (fused / "config.json").write_bytes((folder / "config.json").read_bytes())
    assert any(name.endswith("experts.gate_up_proj") for name in load_file(fused / "model.safetensors"))
    keeps_stacked = MoEOptions(ReferenceMoEKernel())  # the default kernel packs them on the CPU
    hub, ours = load(folder, keeps_stacked), load(fused, keeps_stacked)
    for i in hub.moe_layers:
        assert torch.equal(hub.moe_layers[i].experts.gate_up, ours.moe_layers[i].experts.gate_up)
        assert torch.equal(hub.moe_layers[i].experts.down, ours.moe_layers[i].experts.down)
        assert torch.equal(hub.moe_layers[i].router, ours.moe_layers[i].router)


def test_sharded_checkpoint_loads_through_its_index(tmp_path: Path, prompts: list[list[int]]) -> None:
    folder = save_random_model(CONFIGS["mixtral-8x-top2"](), tmp_path / "sharded", max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) > 1
    attention = ReferenceAttentionBackend()
    logits = PagedRunner(load(folder, None, attention), attention).step({0: prompts[2]})[0]
    assert max_diff(logits, hf_logits(hf_model(folder), prompts[2])) <= TOLERANCE


def test_records_list_exactly_the_supported_architectures() -> None:
    specs = {spec.name: spec for spec in plugin.kernel_core_model_architectures()}
    assert {spec.load() for spec in specs.values()} == CLASSES
    for spec in specs.values():
        assert spec.architectures == spec.load().supported_architectures
    covered = {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config().model_type] for config in CONFIGS.values()}
    assert covered == set().union(*(spec.architectures for spec in specs.values()))


def test_from_pretrained_names_moe_so_the_engine_passes_its_settings() -> None:
    import inspect

    for model_class in CLASSES:
        assert "moe" in inspect.signature(model_class.from_pretrained).parameters


class MoEFamilyConformance(ModelArchitectureConformance):
    """The SDK's suite, once per family (subclasses below), on the default MoE kernel."""

    config_name: str
    record: str

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def plugin_name(self) -> str:
        return self.record

    @pytest.fixture
    def hf_config(self) -> PreTrainedConfig:
        return CONFIGS[self.config_name]()

    @pytest.fixture
    def hf_model(self, model_folder: Path) -> torch.nn.Module:
        return hf_model(model_folder)


class TestMixtralConformance(MoEFamilyConformance):
    config_name, record = "mixtral-8x-top2", "mixtral"


class TestQwen2MoeConformance(MoEFamilyConformance):
    config_name, record = "qwen2moe-8x-top2-norm-shared", "qwen2-moe"


class TestQwen3MoeConformance(MoEFamilyConformance):
    config_name, record = "qwen3moe-6x-top2-unnorm-biases", "qwen3-moe"


class TestOlmoeConformance(MoEFamilyConformance):
    config_name, record = "olmoe-4x-top1-norm-clip-biases", "olmoe"
