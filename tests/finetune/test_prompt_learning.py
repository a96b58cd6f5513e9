"""``kcore finetune`` trains the prompt-learning methods as it trains any tuner (nothing in the
path names them): the adapter is saved, the eval loss is the mean over target tokens of the
model's own loss (virtual tokens' logits come before the labels' positions), and exact match
generates with the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kernel_core.cli import main
from kernel_core.finetune.trainer import _row_losses
from kernel_core.peft import get_config, get_peft_model
from kernel_core.peft.state_dict import read_adapter
from kernel_core_sdk.tiny_models import tiny_llama, token_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = {
    "prompt-tuning": ["--set", "num_virtual_tokens=6"],
    "prefix-tuning": ["--set", "num_virtual_tokens=6", "--set", "prefix_projection=true"],
    "p-tuning": ["--set", "num_virtual_tokens=6", "--set", "encoder_reparameterization_type=LSTM"],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_kcore_finetune_trains_evaluates_and_saves(method: str, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip(f"kernel_core_{method.replace('-', '_')}")
    rows = [{"prompt": f"Capital of country {i}:", "completion": f" City {i}"} for i in range(4)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--eval-data", str(data), "--eval-exact-match", str(data),
            "--output", str(tmp_path / "out"), "--method", method, "--lr", "1e-2", "--batch-size", "2", "--max-steps", "2",
            "--no-progress", *METHODS[method]]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eval loss at step 2" in printed and "exact match after training" in printed
    config, tensors = read_adapter(tmp_path / "out")
    assert config["num_virtual_tokens"] == 6 and list(tensors) == ["prompt_embeddings"]


def test_eval_row_losses_with_virtual_tokens_are_the_model_s_loss() -> None:
    pytest.importorskip("kernel_core_prompt_tuning")
    model = get_peft_model(tiny_llama(), get_config("prompt-tuning", num_virtual_tokens=4)).eval()
    ids = token_ids()
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    with torch.no_grad():
        output = model(input_ids=ids, labels=labels)
    total, count = _row_losses(output.logits, labels).sum(0).tolist()
    torch.testing.assert_close(torch.tensor(total / count), output.loss.double().float(), rtol=1e-6, atol=0)
