"""DecoderModel, the generic skeleton: what a subclass changes (architectures, MLP block, attention
options) changes only that; checked against transformers on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, PreTrainedConfig, Qwen2Config

from kernel_core.contracts.model import ModelArchitecture
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core.modeling import AttentionHeads, AttentionOptions, DecoderModel, FusedLinear, GatedMLP, WeightLoader
from kernel_core_sdk.conformance import ReferenceAttentionBackend
from kernel_core_sdk.paged_runner import PagedRunner

CPU = torch.device("cpu")
TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1,
)


class Plain(DecoderModel):
    supported_architectures = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM"})


class OpaqueMLP:
    """An MLP block offering no projections to adapters (as a block of another kind might)."""

    def __init__(self, mlp: GatedMLP) -> None:
        self.mlp = mlp

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden)


class WithOpaqueMLP(Plain):
    def build_mlp(self, index: int, prefix: str, loader: WeightLoader) -> OpaqueMLP:
        return OpaqueMLP(super().build_mlp(index, prefix, loader))


def save(config: PreTrainedConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def load(model_class: type[DecoderModel], folder: Path) -> DecoderModel:
    return model_class.from_pretrained(folder, attention=ReferenceAttentionBackend(), dtype=torch.float32, device=CPU)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(LlamaConfig(**TINY), tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("model_class", [Plain, WithOpaqueMLP])
def test_logits_match_transformers(model_class: type[DecoderModel], llama: Path) -> None:
    prompt = torch.randint(TINY["vocab_size"], (11,), generator=torch.Generator().manual_seed(1)).tolist()
    model = load(model_class, llama)
    runner = PagedRunner(model, ReferenceAttentionBackend())
    logits = torch.cat([runner.step({0: prompt[:6]})[0], runner.step({0: prompt[6:]})[0]])
    with torch.inference_mode():
        expected = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32)(torch.tensor([prompt])).logits[0]
    assert (logits - expected).abs().max().item() <= 1e-4


def test_adapter_targets_are_every_fused_projection_the_blocks_offer(llama: Path) -> None:
    per_layer = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert set(load(Plain, llama).adapter_targets()) == {f"model.layers.{i}.{p}" for i in range(2) for p in per_layer}
    targets = load(WithOpaqueMLP, llama).adapter_targets()
    assert set(targets) == {f"model.layers.{i}.{p}" for i in range(2) for p in ("qkv_proj", "o_proj")}
    assert list(targets["model.layers.1.qkv_proj"].parts) == [
        f"model.layers.1.self_attn.{p}_proj" for p in "qkv"
    ]


def test_sliding_window_per_layer_type(tmp_path: Path) -> None:
    config = Qwen2Config(
        **TINY, use_sliding_window=True, sliding_window=16, layer_types=["sliding_attention", "full_attention"]
    )
    model = load(Plain, save(config, tmp_path / "qwen2"))
    assert [layer.attention.sliding_window for layer in model.layers] == [16, None]
    assert model.sliding_windows == {16} and model.max_model_len == 128  # no longer capped by the window


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_invalid_sliding_window_is_named(window: object) -> None:
    with pytest.raises(InvalidModelFolderError, match=f"sliding_window {window!r} in config.json"):
        AttentionOptions(sliding_window=window)


def test_architecture_outside_the_subclass_is_named(llama: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"\['LlamaForCausalLM'\] are not supported by DecoderModel \(supported: none\)"):
        load(DecoderModel, llama)


def test_unsupported_activation_is_named(tmp_path: Path) -> None:
    folder = save(LlamaConfig(**TINY), tmp_path / "gelu")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(UnsupportedModelError, match="hidden_act 'gelu'"):
        load(Plain, folder)


def test_heads_must_group_evenly() -> None:
    with pytest.raises(InvalidModelFolderError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        AttentionHeads.from_config(LlamaConfig(**{**TINY, "num_key_value_heads": 3}))
    assert AttentionHeads.from_config(LlamaConfig(**TINY)) == AttentionHeads(4, 2, 16)


class RowsFrom:
    """A hook replacing the first rows of what it is given with fixed tensors."""

    def __init__(self, *rows: torch.Tensor) -> None:
        self.rows, self.calls = rows, 0

    def __call__(self, *tensors: torch.Tensor) -> None:
        self.calls += 1
        for tensor, rows in zip(tensors, self.rows, strict=True):
            tensor[: len(rows)] = rows


def test_embedding_hooks_replace_rows_as_transformers_reads_inputs_embeds(llama: Path) -> None:
    prompt = torch.randint(TINY["vocab_size"], (9,), generator=torch.Generator().manual_seed(2)).tolist()
    virtual = torch.randn(4, TINY["hidden_size"], generator=torch.Generator().manual_seed(3))
    model = load(Plain, llama)
    model.embedding_hooks().append(RowsFrom(virtual))
    logits = PagedRunner(model, ReferenceAttentionBackend()).step({0: [0] * 4 + prompt})[0]
    with torch.inference_mode():
        reference = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32)
        embeds = torch.cat((virtual, reference.get_input_embeddings()(torch.tensor(prompt))))
        expected = reference(inputs_embeds=embeds[None]).logits[0]
    assert (logits - expected).abs().max().item() <= 1e-4


def test_kv_hooks_replace_new_keys_and_values_as_a_transformers_cache_holds_them(llama: Path) -> None:
    """Prefix tuning's shape: per-layer keys/values at positions 0..V-1, the prompt after them."""
    prompt = torch.randint(TINY["vocab_size"], (7,), generator=torch.Generator().manual_seed(4)).tolist()
    model, generator, prefix = load(Plain, llama), torch.Generator().manual_seed(5), 3
    past = [
        tuple(torch.randn(1, model.num_kv_heads, prefix, model.head_size, generator=generator) for _ in "kv")
        for _ in range(model.num_layers)
    ]
    hooks = [RowsFrom(*(t[0].transpose(0, 1) for t in layer)) for layer in past]
    for layer_hooks, hook in zip(model.kv_hooks(), hooks, strict=True):
        layer_hooks.append(hook)
    logits = PagedRunner(model, ReferenceAttentionBackend()).step({0: [0] * prefix + prompt})[0][prefix:]
    assert [hook.calls for hook in hooks] == [1] * model.num_layers
    with torch.inference_mode():
        reference = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32)
        expected = reference(
            torch.tensor([prompt]), cache=DynamicCache(past), attention_mask=torch.ones(1, prefix + len(prompt))
        ).logits[0]
    assert (logits - expected).abs().max().item() <= 1e-4


def test_blocks_and_models_of_plugin_api_1_4_still_offer_their_lora_names(llama: Path) -> None:
    class Legacy(OpaqueMLP):
        def lora_projections(self) -> dict[str, FusedLinear]:
            return {"down_proj": self.mlp.down_proj}

    class WithLegacyMLP(Plain):
        def build_mlp(self, index: int, prefix: str, loader: WeightLoader) -> Legacy:
            return Legacy(super().build_mlp(index, prefix, loader))

    assert "model.layers.1.down_proj" in load(WithLegacyMLP, llama).adapter_targets()

    class LegacyModel(ModelArchitecture):
        from_pretrained = forward = compute_logits = None  # type: ignore[assignment]

        def lora_targets(self) -> dict[str, str]:
            return {"t": "target"}

    assert LegacyModel.adapter_targets(LegacyModel.__new__(LegacyModel)) == {"t": "target"}


def test_prepare_weights_hands_every_projection_and_an_untied_lm_head_to_the_policy(llama: Path, tmp_path: Path) -> None:
    model = load(Plain, llama)
    loaded = {name: tensor[rows].clone() for name, (tensor, rows) in model.weight_slices.items()}
    prepared: list[torch.Tensor] = []

    def prepare(weight: torch.Tensor) -> torch.Tensor:
        prepared.append(weight.clone())
        return prepared[-1]

    model.prepare_weights(prepare)
    targets = model.adapter_targets()
    assert {id(t) for t in prepared} == {id(target.weight) for target in targets.values()} | {id(model.lm_head)}
    assert model.weight_slices["model.layers.1.self_attn.k_proj.weight"][0] is targets["model.layers.1.qkv_proj"].weight
    assert model.weight_slices["lm_head.weight"][0] is model.lm_head
    assert all(torch.equal(tensor[rows], loaded[name]) for name, (tensor, rows) in model.weight_slices.items())

    tied = load(Plain, save(LlamaConfig(**TINY, tie_word_embeddings=True), tmp_path))
    tied.prepare_weights(prepare)
    assert tied.lm_head is tied.embed_tokens
