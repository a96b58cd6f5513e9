"""The trainer-script example: a kernel-core LoRA trained by a plain transformers ``Trainer`` and by
TRL's ``SFTTrainer`` (the tiny model, a few steps). Each writes an adapter that loads here and in
``peft`` (the oracle) with the same logits, the tuner's hook runs after every optimizer step, and
both trainers follow the same loss curve: the same rows, completion-only loss, the same steps."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kernel_core.peft import PeftModel, get_method

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainer-script"
SCRIPTS = ("train_with_trainer", "train_with_sft_trainer")
STEPS = 3
TOLERANCE = 1e-4  # fp32, as the peft interop tests use


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"trainer_script_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Run each script's ``main`` once: its output folder, loss log and the hook calls it caused."""
    tuner_class = type(get_method("lora").tuner)
    original = tuner_class.on_optimizer_step
    results: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets-cache")))
        patch.syspath_prepend(str(EXAMPLE))  # the scripts import lora_recipe from beside them
        for name in SCRIPTS:
            calls: list[tuple[str, int]] = []

            def spy(self: Any, model: Any, adapter_name: str, step: int, calls: list[tuple[str, int]] = calls) -> None:
                calls.append((adapter_name, step))
                original(self, model, adapter_name, step)

            patch.setattr(tuner_class, "on_optimizer_step", spy)
            output = tmp_path_factory.mktemp(name)
            trainer = _script(name).main(["--model", str(tiny_model), "--output", str(output), "--max-steps", str(STEPS)])
            losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            results[name] = {"output": output, "losses": losses, "calls": calls}
    sys.modules.pop("lora_recipe", None)
    yield results


@pytest.mark.parametrize("name", SCRIPTS)
def test_writes_the_adapter_and_the_loss_plot(runs: dict[str, dict[str, Any]], name: str) -> None:
    output = runs[name]["output"]
    for file in ("adapter_config.json", "adapter_model.safetensors", "loss.png"):
        assert (output / file).is_file(), file


@pytest.mark.parametrize("name", SCRIPTS)
def test_tuner_hook_runs_after_every_optimizer_step(runs: dict[str, dict[str, Any]], name: str) -> None:
    assert runs[name]["calls"] == [("default", step) for step in range(1, STEPS + 1)]


@pytest.mark.parametrize("name", SCRIPTS)
def test_adapter_moved_off_its_init(runs: dict[str, dict[str, Any]], name: str) -> None:
    """LoRA's B matrices start at zero; every one is trained."""
    tensors = load_file(runs[name]["output"] / "adapter_model.safetensors")
    b_matrices = {key: value for key, value in tensors.items() if ".lora_B." in key}
    assert b_matrices and all(value.abs().max() > 0 for value in b_matrices.values())


def test_both_trainers_follow_the_same_loss_curve(runs: dict[str, dict[str, Any]]) -> None:
    """Trainer on rows tokenized by the script and SFTTrainer on the raw prompt/completion rows: the
    same tokens, labels and steps, so the same losses (TRL's fused head sums in another order)."""
    trainer, sft = (runs[name]["losses"] for name in SCRIPTS)
    assert len(trainer) == STEPS
    assert sft == pytest.approx(trainer, rel=1e-5)


def _prompt_ids(tiny_model: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Turn the sentence into a record.\nSentence: Iris (27) owns 5 rabbits and lives in Zagreb.\nRecord:\n"
    return tokenizer(prompt, return_tensors="pt").input_ids


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", SCRIPTS)
def test_adapter_loads_here_and_in_peft_with_the_same_logits(runs: dict[str, dict[str, Any]], name: str, tiny_model: Path) -> None:
    output, ids = runs[name]["output"], _prompt_ids(tiny_model)
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about its own config defaults
        reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(output)).eval()
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_model), ids)
    assert (_logits(ours, ids) - base).abs().max() > 1e-3, "the trained adapter must change the output"
    torch.testing.assert_close(_logits(ours, ids), _logits(reference, ids), atol=TOLERANCE, rtol=0)
