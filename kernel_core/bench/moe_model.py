"""The mid-size random mixture-of-experts model ``kcore bench moe`` serves: its config lives here, its
weights are drawn from a fixed seed, so every run on every machine serves the same model.

Mixtral-style (8 experts, top-2, hidden 1024, 8 layers, the expert width of Mixtral's 3.5x ratio),
with the embedded SmolLM2's tokenizer and vocabulary so that W1's prompts tokenize as they do for the
dense benchmarks. Built once with transformers into ``$KERNEL_CORE_CACHE/bench/moe-model/<hash>`` and
renamed into place, so a killed build never leaves a folder that looks finished.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kernel_core.atomic import atomic_folder
from kernel_core.models.embedded import cache_root, embedded_model_path

#: transformers ``model_type`` of the benchmark model.
MODEL_TYPE = "mixtral"
#: Its config, besides the vocabulary and special tokens taken from the tokenizer's model.
CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e6,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
SEED = 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_config(config: dict[str, Any] = CONFIG) -> dict[str, Any]:
    """The full config: ``config`` with the tokenizer model's vocabulary and special tokens."""
    tokens = json.loads((embedded_model_path() / "config.json").read_text())
    shared = {key: tokens[key] for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id") if key in tokens}
    return {**config, **shared}


def model_folder(config: dict[str, Any] = CONFIG) -> Path:
    """The folder of the model of ``config`` (default: the benchmark's), built on first use: about a
    minute and ~2.9 GB of float32 weights for the benchmark's."""
    config = model_config(config)
    digest = hashlib.sha256(json.dumps({"type": MODEL_TYPE, "seed": SEED, **config}, sort_keys=True).encode())
    folder = cache_root() / "bench" / "moe-model" / f"{MODEL_TYPE}-{digest.hexdigest()[:12]}"
    if not (folder / "config.json").is_file():
        with atomic_folder(folder) as staging:
            _build(config, staging)
    return folder


def _build(config: dict[str, Any], out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(MODEL_TYPE, **config), dtype=torch.float32)
    model.save_pretrained(out)
    source = embedded_model_path()
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            (out / name).write_bytes((source / name).read_bytes())
