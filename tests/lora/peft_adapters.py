"""Adapters made by the real ``peft`` package for a model folder, and HF PEFT's greedy output
with one of them: the oracle the serving tests compare the engine with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kernel_core_sdk.hf_oracle import make_lora_adapter as make_adapter

#: Eight adapters for a Llama: ranks 8-32, different target sets (all-linear too), rsLoRA on
#: one, rank and alpha patterns on another. Every B is non-zero (``init_lora_weights=False``).
ADAPTERS: dict[str, dict[str, Any]] = {
    "qv8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all16": dict(r=16, lora_alpha=32, target_modules="all-linear"),
    "attn32": dict(r=32, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mlp12": dict(r=12, lora_alpha=24, target_modules=["gate_proj", "up_proj", "down_proj"]),
    "rs16": dict(r=16, lora_alpha=8, target_modules=["k_proj", "o_proj", "up_proj"], use_rslora=True),
    "pattern8": dict(
        r=8, lora_alpha=16, target_modules="all-linear",
        rank_pattern={"layers.0.self_attn.q_proj": 32, "down_proj": 20},
        alpha_pattern={"v_proj": 64, "layers.1.mlp.gate_proj": 4},
    ),
    "down24": dict(r=24, lora_alpha=48, target_modules=["down_proj", "o_proj"]),
    "layer1": dict(r=10, lora_alpha=20, target_modules=["q_proj", "gate_proj"], layers_to_transform=[1]),
}


@dataclass
class Oracle:
    """HF models of one base folder: the base, and each adapter folder's PEFT model (cached)."""

    base: Path
    _models: dict[Path | None, Any] = field(default_factory=dict)

    def model(self, adapter: Path | None) -> Any:
        if adapter not in self._models:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
            if adapter is not None:
                model = PeftModel.from_pretrained(model, adapter)
            self._models[adapter] = model.eval()
        return self._models[adapter]

    def generate(self, adapter: Path | None, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy new tokens as ``generate`` returns them (EOS included when it ends them)."""
        model = self.model(adapter)
        ids = torch.tensor([list(prompt_ids)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=model.config.eos_token_id,
            )
        return out[0, ids.shape[1] :].tolist()

    def greedy_by_forward(self, adapter: Path | None, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy new tokens from a loop of whole-sequence forwards, stopping after an end-of-sequence
        token as ``generate`` does: peft 0.21.2's ``generate`` ignores a prefix and repeats virtual
        tokens on transformers 5.x (see ``kernel_core_sdk.peft_oracle``)."""
        model = self.model(adapter)
        eos = model.config.eos_token_id
        sequence, new = torch.tensor([list(prompt_ids)]), []
        with torch.inference_mode():
            while len(new) < max_new_tokens and (not new or new[-1] != eos):
                logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
                new.append(int(logits[0, -1].argmax()))
                sequence = torch.cat([sequence, torch.tensor([[new[-1]]])], dim=1)
        return new


def make_adapters(base: Path, root: Path, specs: dict[str, dict[str, Any]] = ADAPTERS) -> dict[str, Path]:
    return {name: make_adapter(base, root / name, seed, **spec) for seed, (name, spec) in enumerate(specs.items(), 1)}


_made: dict[tuple[Path, Path], dict[str, Path]] = {}


def adapters_for(base: Path, root: Path) -> dict[str, Path]:
    """:data:`ADAPTERS` for ``base`` under ``root``, made once per process (session fixtures of
    several test modules share them)."""
    if (base, root) not in _made:
        _made[base, root] = make_adapters(base, root)
    return _made[base, root]
