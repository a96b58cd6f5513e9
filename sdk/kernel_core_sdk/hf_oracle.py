"""Hugging Face transformers (and peft) as the oracle of a model plugin's tests: tiny random models
saved as folders, transformers' logits and greedy tokens for them, LoRA and IA3 adapters made by
the real ``peft``. What the Llama and MoE model plugins' tests compare the plugin with.

transformers and peft are imported when a helper is called, so importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def save_random_model(config: Any, folder: Path, seed: int = 0, **save_kwargs: Any) -> Path:
    """A randomly initialised model of the transformers ``config``, seeded, saved to ``folder``
    as ``save_pretrained`` writes it (``save_kwargs``: e.g. ``max_shard_size``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, **save_kwargs)
    return folder


def save_servable_model(config: Callable[..., Any], tokenizer_folder: Path, folder: Path) -> Path:
    """A random model the engine can serve: ``config(vocab_size=..., bos_token_id=..., eos_token_id=...)``
    sized to the tokenizer of ``tokenizer_folder``, saved with that tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    save_random_model(config(**ids), folder)
    tokenizer.save_pretrained(folder)
    return folder


def hf_logits(model: Any, tokens: list[int]) -> torch.Tensor:
    """transformers' logits ``[len, vocab]`` for one whole sequence."""
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0]


def hf_greedy(model: Any, tokens: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy tokens, all ``max_new_tokens`` of them (no stop at end of sequence)."""
    ids = torch.tensor([tokens])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None
        )
    assert out.shape[1] == len(tokens) + max_new_tokens
    return out[0, len(tokens) :].tolist()


def max_diff(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference of two tensors of the same shape."""
    assert ours.shape == expected.shape, (tuple(ours.shape), tuple(expected.shape))
    return (ours - expected).abs().max().item()


def make_lora_adapter(base: Path, folder: Path, seed: int, **lora: Any) -> Path:
    """A PEFT LoRA folder for the model folder ``base``, saved by ``peft``, with random non-zero A
    and B (``init_lora_weights=False``, B times 4 so that the adapter visibly moves the output);
    ``lora`` are ``LoraConfig`` fields (``r``, ``lora_alpha``, ``target_modules``, ...)."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", **{"init_lora_weights": False, **lora})
    return _save_peft_adapter(base, folder, seed, config, "lora_B")


def make_ia3_adapter(base: Path, folder: Path, seed: int, **ia3: Any) -> Path:
    """A PEFT IA3 folder for the model folder ``base``, saved by ``peft``, with random scales
    ``4 * N(0, 1)`` (an identity adapter would prove nothing); ``ia3`` are ``IA3Config``
    fields (``target_modules``, ``feedforward_modules``; none: peft's defaults for the model type)."""
    from peft import IA3Config

    config = IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False, **ia3)
    return _save_peft_adapter(base, folder, seed, config, "ia3_l")


def make_prompt_adapter(base: Path, folder: Path, seed: int, config_class: str, **fields: Any) -> Path:
    """A PEFT prompt-learning folder (``config_class``: ``PromptTuningConfig``,
    ``PromptEncoderConfig`` or ``PrefixTuningConfig``) saved by ``peft``, its trained parameters
    moved off their init so that the adapter visibly changes the output."""
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(model, getattr(peft, config_class)(task_type="CAUSAL_LM", **fields))
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    peft_model.save_pretrained(folder)
    return folder


def _save_peft_adapter(base: Path, folder: Path, seed: int, config: Any, scaled: str) -> Path:
    """``peft``'s adapter of ``config`` on ``base``, initialised under ``seed``, the parameters
    whose names contain ``scaled`` times 4, saved to ``folder``."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if scaled in name:
                param.mul_(4.0)
    peft_model.save_pretrained(folder)
    return folder


def rewrite_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Apply ``edit`` to the tensors of ``folder``'s single ``model.safetensors`` (for tests of
    the errors a broken checkpoint gets: a tensor removed, one of the wrong shape)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **changes: Any) -> None:
    """Overwrite fields of ``folder``'s ``config.json``."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
