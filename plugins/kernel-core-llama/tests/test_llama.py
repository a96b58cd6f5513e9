"""The Llama family (Llama, Mistral, Qwen2, Qwen3) against Hugging Face transformers, the oracle:
logits within 1e-4 (fp32) and identical greedy tokens, over one step, flattened batches, chunked
prefill and decode."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from kernel_core.contracts.attention import AttentionBackend
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core_llama import plugin
from kernel_core_llama.model import LlamaModel
from kernel_core_sdk.conformance import ModelArchitectureConformance, ReferenceAttentionBackend
from kernel_core_sdk.hf_oracle import edit_config, hf_greedy, hf_logits, max_diff, rewrite_tensors, save_random_model
from kernel_core_sdk.paged_runner import PagedRunner, greedy

TOLERANCE = 1e-4
CPU = torch.device("cpu")
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,  # logits of order 1, so that 1e-4 is a sharp test
)

CONFIGS: dict[str, Callable[[], PreTrainedConfig]] = {
    "llama-llama3-rope": lambda: LlamaConfig(
        **TINY,
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 10000.0,
        },
    ),
    "llama-linear-rope-biases-tied": lambda: LlamaConfig(
        **TINY,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),
    "mistral-dynamic-rope-mqa": lambda: MistralConfig(
        **{**TINY, "num_key_value_heads": 1},
        head_dim=16,
        sliding_window=128,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    ),
    "qwen2-yarn-rope-tied": lambda: Qwen2Config(
        **TINY,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 10000.0,
        },
        tie_word_embeddings=True,
    ),
    "qwen3-qk-norm-biases": lambda: Qwen3Config(
        **TINY, head_dim=16, attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
    ),
    # Windows shorter than the prompts (PROMPT_LENGTHS), crossing chunks (chunk_size 5) and blocks (4).
    "mistral-window-4": lambda: MistralConfig(**TINY, sliding_window=4),
    "qwen2-mixed-window-6": lambda: Qwen2Config(
        **TINY, use_sliding_window=True, sliding_window=6, layer_types=["full_attention", "sliding_attention"]
    ),
}
PROMPT_LENGTHS = (13, 5, 22)


def load(folder: Path, attention: AttentionBackend | None = None) -> LlamaModel:
    attention = attention or ReferenceAttentionBackend()
    return LlamaModel.from_pretrained(folder, attention=attention, dtype=torch.float32, device=CPU)


def installed_backend(plugin: str) -> AttentionBackend:
    """An attention plugin's backend, loaded as the engine does; skipped until it is installed."""
    entry = pytest.importorskip(plugin)
    (spec,) = entry.kernel_core_attention_backends()
    return spec.load()()


BACKENDS: dict[str, Callable[[], AttentionBackend]] = {
    "reference": ReferenceAttentionBackend,
    "attn-torch": functools.partial(installed_backend, "kernel_core_attn_torch.plugin"),
    "attn-cpu": functools.partial(installed_backend, "kernel_core_attn_cpu.plugin"),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(CONFIGS[request.param](), tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def hf_model(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(params=sorted(BACKENDS))
def attention(request: pytest.FixtureRequest) -> AttentionBackend:
    return BACKENDS[request.param]()


@pytest.fixture
def model(folder: Path, attention: AttentionBackend) -> LlamaModel:
    return load(folder, attention)


@pytest.fixture
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(TINY["vocab_size"], (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def test_one_prompt_in_one_step(
    model: LlamaModel, attention: AttentionBackend, hf_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    logits = PagedRunner(model, attention).step({0: prompts[0]})[0]
    assert max_diff(logits, hf_logits(hf_model, prompts[0])) <= TOLERANCE


def test_prompts_of_different_lengths_flattened_into_one_step(
    model: LlamaModel, attention: AttentionBackend, hf_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    logits = PagedRunner(model, attention).step(dict(enumerate(prompts)))
    for i, prompt in enumerate(prompts):
        assert max_diff(logits[i], hf_logits(hf_model, prompt)) <= TOLERANCE, f"prompt {i}"


def test_chunked_prefill_then_greedy_decode_match_generate(
    model: LlamaModel, attention: AttentionBackend, hf_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    logits, generated = greedy(PagedRunner(model, attention), prompts, max_new_tokens=6, chunk_size=5)
    for i, prompt in enumerate(prompts):
        assert max_diff(logits[i], hf_logits(hf_model, prompt)) <= TOLERANCE, f"prompt {i}"
        assert generated[i] == hf_greedy(hf_model, prompt, 6), f"prompt {i}"


def test_weight_slices_address_every_hf_parameter(folder: Path, hf_model: PreTrainedModel) -> None:
    model = load(folder)
    for name, parameter in hf_model.state_dict().items():
        if name == "lm_head.weight" and hf_model.config.tie_word_embeddings:
            assert model.lm_head is model.embed_tokens
            continue
        tensor, rows = model.weight_slices[name]
        assert torch.equal(tensor[rows], parameter), name


def test_record_lists_exactly_the_supported_architectures() -> None:
    (spec,) = plugin.kernel_core_model_architectures()
    assert spec.architectures == LlamaModel.supported_architectures
    assert {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config().model_type] for config in CONFIGS.values()} == spec.architectures
    assert spec.load() is LlamaModel


class LlamaFamilyConformance(ModelArchitectureConformance):
    """The SDK's suite, once per architecture of the record (subclasses below)."""

    config_name: str

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def hf_config(self) -> PreTrainedConfig:
        return CONFIGS[self.config_name]()


class TestLlamaConformance(LlamaFamilyConformance):
    config_name = "llama-llama3-rope"


class TestMistralConformance(LlamaFamilyConformance):
    config_name = "mistral-dynamic-rope-mqa"


class TestQwen2Conformance(LlamaFamilyConformance):
    config_name = "qwen2-yarn-rope-tied"


class TestQwen3Conformance(LlamaFamilyConformance):
    config_name = "qwen3-qk-norm-biases"


# --- loading: sharded checkpoints and clear errors naming the culprit -------------------------


@pytest.fixture
def llama_folder(tmp_path: Path) -> Path:
    return save_random_model(CONFIGS["llama-llama3-rope"](), tmp_path / "llama")


def test_sharded_checkpoint_loads_through_its_index(tmp_path: Path, prompts: list[list[int]]) -> None:
    folder = save_random_model(CONFIGS["qwen2-yarn-rope-tied"](), tmp_path / "sharded", max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 1
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    attention = ReferenceAttentionBackend()
    logits = PagedRunner(load(folder, attention), attention).step({0: prompts[2]})[0]
    assert max_diff(logits, hf_logits(hf_model, prompts[2])) <= TOLERANCE


def test_unsupported_architecture_is_named(llama_folder: Path) -> None:
    edit_config(llama_folder, architectures=["GemmaForCausalLM"])
    with pytest.raises(UnsupportedModelError, match=r"\['GemmaForCausalLM'\] are not supported.*LlamaForCausalLM"):
        load(llama_folder)


def test_missing_tensor_is_named(llama_folder: Path) -> None:
    rewrite_tensors(llama_folder, lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(InvalidModelFolderError, match=r"missing the tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load(llama_folder)


def test_shape_mismatch_names_tensor_and_both_shapes(llama_folder: Path) -> None:
    def shrink(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    rewrite_tensors(llama_folder, shrink)
    with pytest.raises(
        InvalidModelFolderError,
        match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' .* has shape \[16, 64\], expected \[32, 64\]",
    ):
        load(llama_folder)


def test_context_beyond_max_position_embeddings_is_refused(llama_folder: Path) -> None:
    attention = ReferenceAttentionBackend()
    runner = PagedRunner(load(llama_folder, attention), attention, num_blocks=80)
    with pytest.raises(ValueError, match=r"context of 257 tokens exceeds max_position_embeddings \(256\)"):
        runner.step({0: [1] * 257})


# --- the embedded SmolLM2 ---------------------------------------------------------------------


SmolLM2 = tuple[LlamaModel, PreTrainedModel, AttentionBackend, Path]


@pytest.fixture
def smollm2(embedded_model: Path) -> SmolLM2:
    """Ours and transformers' SmolLM2, the backend ours runs on, and the model folder."""
    attention = ReferenceAttentionBackend()
    hf_model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32).eval()
    return load(embedded_model, attention), hf_model, attention, embedded_model


def chat_prompt(folder: Path, question: str) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


@pytest.mark.slow
def test_embedded_smollm2_logits_match_transformers(smollm2: SmolLM2) -> None:
    model, hf_model, attention, folder = smollm2
    prompt = chat_prompt(folder, "What is the capital of France?")
    logits = PagedRunner(model, attention, num_blocks=8, block_size=16).step({0: prompt})[0]
    assert max_diff(logits, hf_logits(hf_model, prompt)) <= TOLERANCE


@pytest.mark.slow
def test_embedded_smollm2_greedy_tokens_match_generate(smollm2: SmolLM2) -> None:
    model, hf_model, attention, folder = smollm2
    prompts = [chat_prompt(folder, q) for q in ("Write a short poem about the sea.", "What is the capital of France?")]
    runner = PagedRunner(model, attention, num_blocks=16, block_size=16)
    _, generated = greedy(runner, prompts, max_new_tokens=16, chunk_size=16)
    assert generated == [hf_greedy(hf_model, prompt, 16) for prompt in prompts]
    assert "The capital of France is Paris." in AutoTokenizer.from_pretrained(folder).decode(generated[1])
