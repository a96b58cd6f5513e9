"""Fixtures of the fine-tuning tests: the tiny model's tokenizer, small JSONL files, a tiny
model whose few trainable parameters stand in for an adapter (the loop works on any module), and
a tiny tuner plugin that is not LoRA."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ..conftest import plugin_source

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Cuba", "Havana")]


def _capital_rows() -> list[dict[str, Any]]:
    """Short rows of both formats (a few tokens each: steps stay fast on the tiny model)."""
    rows: list[dict[str, Any]] = []
    for country, city in CAPITALS:
        rows.append({"prompt": f"Capital of {country}:", "completion": f" {city}"})
        rows.append({"messages": [{"role": "user", "content": country}, {"role": "assistant", "content": city}]})
    return rows


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$KERNEL_CORE_CACHE`` of the test's own, where ``datasets`` caches the data files it parses
    (instead of the user's cache)."""
    cache = tmp_path_factory.mktemp("kernel_core_cache")
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(cache))
    return cache


@pytest.fixture
def capital_rows() -> list[dict[str, Any]]:
    """Twelve short rows, six of each format (a few tokens each: steps stay fast on the tiny model)."""
    return _capital_rows()


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[Any]], Path]:
    """Write rows (objects, or raw strings for malformed lines) as a JSONL file."""
    return _write_jsonl


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def load_tiny(tiny_model: Path) -> Callable[..., torch.nn.Module]:
    """Build the tiny model with only the attention query projections trainable (a stand-in for
    an adapter); ``attention_dropout`` makes training draw random numbers, as LoRA dropout does."""
    from transformers import AutoModelForCausalLM

    def load(attention_dropout: float = 0.0) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attention_dropout=attention_dropout)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.endswith("q_proj.weight"))
        return model

    return load


@pytest.fixture
def scale_tuner(fake_dist: Callable[..., Path]) -> Iterator[str]:
    """Install the tiny ``scale`` tuner (``scale_tuner.py``, not LoRA) as a plugin; its method name."""
    record = ('TunerSpec(name="scale", description="A learned scale per output channel.", '
              'implementation="kc_scale_tuner:ScaleTuner", peft_type="SCALE")')
    site = fake_dist("kc-scale-tuner", "kc_scale_tuner_plugin", plugin_source("kernel_core_tuners", record, api="1.2"))
    shutil.copyfile(Path(__file__).with_name("scale_tuner.py"), site / "kc_scale_tuner.py")
    yield "scale"
    sys.modules.pop("kc_scale_tuner", None)
