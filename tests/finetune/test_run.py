"""One ``kcore finetune`` job end to end on the tiny model (:func:`run_finetune`, or the CLI where a flag
is what is tested): accumulation equals one bigger batch, warm-up then cosine with clipping, an eval
loss that is the mean over target tokens, bf16 and gradient checkpointing, the refusals (a resume
with other settings, a folder holding another run, streaming without a length, fp16 on the CPU),
and what lands beside the adapter (trainer state, arguments as JSON, loss.png, TensorBoard)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from kernel_core.cli import main
from kernel_core.errors import CheckpointError, KernelCoreError
from kernel_core.finetune import adapter_options, run
from kernel_core.finetune.run import FinetuneJob, FinetuneReport, run_finetune
from kernel_core.finetune.trainer import TRAINING_ARGS_JSON
from kernel_core.peft.state_dict import read_adapter

from .trajectory import log_history

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data(tmp_path: Path, write_jsonl: Callable[[Path, list[Any]], Path], capital_rows: list[dict[str, Any]]) -> Path:
    """Twelve short rows of both formats, with different numbers of target tokens."""
    return write_jsonl(tmp_path / "train.jsonl", capital_rows)


def _job(tiny_model: Path, data: Path, output: Path, **fields: Any) -> FinetuneJob:
    """A small LoRA without dropout (so batches of different shapes draw no random numbers)."""
    return FinetuneJob(
        model=str(tiny_model), data=data, output=output, progress=False,
        adapter_options=[("the test", {"r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0})],
        training_args=[("the test", {"learning_rate": 1e-2, **fields})],
    )


def _finetune(job: FinetuneJob) -> FinetuneReport:
    return run_finetune(job, out=io.StringIO())


def _kcore(tiny_model: Path, data: Path, output: Path, *flags: str) -> list[dict[str, Any]]:
    """``kcore finetune`` with ``flags``; the log history it wrote."""
    argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--r", "4",
            "--alpha", "8", "--dropout", "0", "--lr", "1e-2", "--batch-size", "2", "--no-progress", *flags]
    assert main(argv) == 0
    return log_history(output)


def _records(history: list[dict[str, Any]], key: str) -> list[Any]:
    return [record[key] for record in history if "loss" in record]


def test_gradient_accumulation_equals_one_bigger_batch(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    # The loss of an accumulated step is normalised by the whole step's target tokens
    # (num_items_in_batch), so micro-batches of different token counts sum to the big batch's mean.
    # SGD: the adapter is then the sum of the steps' gradients, so it shows any difference in them
    # (Adam divides each by its running RMS, which magnifies fp32 noise where momentum cancels).
    reports = {}
    for batch, accumulate in ((4, 1), (2, 2), (1, 4)):
        output = tmp_path / f"{batch}x{accumulate}"
        job = _job(tiny_model, data, output, max_steps=3, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
                   optim="sgd", learning_rate=0.5)
        reports[batch, accumulate] = _finetune(job)
    big = reports[4, 1]
    for (batch, accumulate), report in reports.items():
        assert _records(report.log_history, "num_input_tokens_seen") == _records(big.log_history, "num_input_tokens_seen")
        assert report.losses == pytest.approx(big.losses, rel=1e-6), (batch, accumulate)
        assert _records(report.log_history, "grad_norm") == pytest.approx(_records(big.log_history, "grad_norm"), rel=1e-5)
        expected, found = read_adapter(tmp_path / "4x1")[1], read_adapter(report.adapter)[1]
        for name, tensor in expected.items():
            torch.testing.assert_close(found[name], tensor, rtol=1e-5, atol=1e-7, msg=lambda text: f"{batch}x{accumulate} {name}: {text}")


def test_warmup_then_cosine_with_clipping_and_a_progress_bar(
    tiny_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import get_cosine_schedule_with_warmup

    clipped_norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clipped_norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    job = _job(tiny_model, data, tmp_path, max_steps=5, per_device_train_batch_size=1, learning_rate=0.1, warmup_steps=2, max_grad_norm=1e-3)
    handle = register_optimizer_step_pre_hook(record)
    try:
        report = _finetune(dataclasses.replace(job, progress=True))
    finally:
        handle.remove()

    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = get_cosine_schedule_with_warmup(dummy, num_warmup_steps=2, num_training_steps=5)
    expected = []
    for _ in range(5):
        expected.append(schedule.get_last_lr()[0])
        dummy.step()
        schedule.step()
    learning_rates = _records(report.log_history, "learning_rate")
    assert learning_rates == pytest.approx(expected)
    assert expected == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.025])  # up over 2 steps, then half a cosine
    assert all(norm > 1e-3 for norm in _records(report.log_history, "grad_norm"))  # the norm before clipping
    assert len(clipped_norms) == 5 and all(norm <= 1e-3 * 1.001 for norm in clipped_norms)  # what the optimizer used
    bar = capsys.readouterr().err
    assert "finetune" in bar and "loss=" in bar and "tok_s=" in bar


def test_eval_loss_is_the_mean_over_target_tokens(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kernel_core.finetune.data import load_training_data
    from kernel_core.peft import PeftModel

    # Batches of 5, 5 and 2 rows with different token counts: a mean of batch means would differ.
    job = _job(tiny_model, data, tmp_path, max_steps=2, per_device_eval_batch_size=5)
    report = _finetune(dataclasses.replace(job, eval_data=data))
    [(step, eval_loss)] = report.eval_losses
    assert step == 2

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), tmp_path).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in load_training_data(data, AutoTokenizer.from_pretrained(tiny_model), None):
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logits = model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum").item()
            count += int((labels[1:] != -100).sum())
    assert eval_loss == pytest.approx(total / count, rel=1e-5)


@contextmanager
def _mlp_forwards() -> Iterator[list[int]]:
    """Counts the forward passes of the decoder layers' MLPs while it is open: they run inside the
    layer's forward, which checkpointing runs again during backward. Pre-hooks, since a recomputation
    stops as soon as it has what backward needs, before the MLP returns."""
    count = [0]

    def hook(module: torch.nn.Module, args: Any) -> None:
        count[0] += type(module).__name__ == "LlamaMLP"

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def fp32_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], int]:
    """Three plain fp32 steps: the data, the log history, and how many MLP forwards ran."""
    folder = tmp_path_factory.mktemp("fp32")
    rows = [{"prompt": f"Capital of country {i}:", "completion": f" City {i}"} for i in range(6)]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with _mlp_forwards() as forwards:
        history = _kcore(tiny_model, data, folder / "out", "--max-steps", "3")
    return data, history, forwards[0]


def test_bf16_trains_close_to_fp32_but_not_equal(tiny_model: Path, fp32_run: tuple[Path, list[dict[str, Any]], int], tmp_path: Path) -> None:
    data, fp32, _ = fp32_run
    bf16 = _kcore(tiny_model, data, tmp_path, "--max-steps", "3", "--precision", "bf16")
    assert json.loads((tmp_path / TRAINING_ARGS_JSON).read_text())["bf16"] is True
    for ours, theirs in zip(_records(bf16, "loss"), _records(fp32, "loss"), strict=True):
        assert ours != theirs and ours == pytest.approx(theirs, rel=2e-2)
    assert all(tensor.dtype == torch.float32 for tensor in read_adapter(tmp_path)[1].values())  # weights stay fp32


def test_gradient_checkpointing_recomputes_and_gives_the_same_losses(
    tiny_model: Path, fp32_run: tuple[Path, list[dict[str, Any]], int], tmp_path: Path
) -> None:
    data, plain, plain_forwards = fp32_run
    with _mlp_forwards() as forwards:
        checkpointed = _kcore(tiny_model, data, tmp_path, "--max-steps", "3", "--gradient-checkpointing")
    assert plain_forwards == 2 * 3 and forwards[0] == 2 * plain_forwards  # each layer runs again in backward
    assert _records(checkpointed, "loss") == _records(plain, "loss")
    assert _records(checkpointed, "grad_norm") == _records(plain, "grad_norm")


def test_fp16_on_the_cpu_is_refused_before_the_model_loads(
    tiny_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("KERNEL_CORE_PLATFORM", "cpu")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the model loaded"))
    argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path), "--precision", "fp16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kcore: error: fp16 ") and "--precision bf16" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def one_step_checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneJob, Path]:
    """A job of one step with a checkpoint, and the checkpoint."""
    folder = tmp_path_factory.mktemp("one-step")
    data = folder / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Capital of France:", "completion": " Paris"}) + "\n")
    job = _job(tiny_model, data, folder / "out", max_steps=1, per_device_train_batch_size=1, save_strategy="steps", save_steps=1)
    _finetune(job)
    return job, folder / "out" / "checkpoint-1"


@pytest.mark.parametrize(
    ("setting", "value"),
    [("per_device_train_batch_size", 2), ("gradient_accumulation_steps", 2), ("seed", 1), ("learning_rate", 1e-3),
     ("lr_scheduler_type", "linear"), ("weight_decay", 0.1)],
)
def test_a_resume_with_other_settings_is_refused_naming_the_setting(
    one_step_checkpoint: tuple[FinetuneJob, Path], setting: str, value: Any
) -> None:
    job, checkpoint = one_step_checkpoint
    same = run.training_arguments(job, eval_data=False)
    adapter = _adapter(job)
    run.check_resumable(checkpoint, same, adapter)
    other = dataclasses.replace(job, training_args=[*job.training_args, ("--set", {setting: value})])
    with pytest.raises(CheckpointError, match=rf"cannot resume from {checkpoint}: it was written with {setting}=.*, this run has {setting}="):
        run.check_resumable(checkpoint, run.training_arguments(other, eval_data=False), adapter)


def _adapter(job: FinetuneJob) -> Any:
    return adapter_options.build(job.method, job.adapter_options)


@pytest.mark.parametrize(("field", "value", "saved"), [("r", 8, 4), ("lora_dropout", 0.1, 0.0), ("use_rslora", True, False),
                                                       ("target_modules", ["q_proj"], "all-linear")])
def test_a_resume_with_other_adapter_options_is_refused_naming_the_field(
    one_step_checkpoint: tuple[FinetuneJob, Path], field: str, value: Any, saved: Any
) -> None:
    job, checkpoint = one_step_checkpoint
    other = dataclasses.replace(job, adapter_options=[*job.adapter_options, ("--set", {field: value})])
    message = f"cannot resume from {checkpoint}: its adapter was made with {field}={saved!r}, this run has {field}={value!r}"
    with pytest.raises(CheckpointError) as error:
        run.check_resumable(checkpoint, run.training_arguments(job, eval_data=False), _adapter(other))
    assert str(error.value).startswith(message)


def test_a_resume_with_other_settings_is_refused_before_training(one_step_checkpoint: tuple[FinetuneJob, Path], tmp_path: Path) -> None:
    import shutil

    job, checkpoint = one_step_checkpoint
    shutil.copytree(checkpoint, tmp_path / checkpoint.name)
    other = dataclasses.replace(job, output=tmp_path, resume=True, training_args=[*job.training_args, ("--set", {"seed": 4})])
    with pytest.raises(CheckpointError, match="it was written with seed=0, this run has seed=4"):
        _finetune(other)


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        (TRAINING_ARGS_JSON, "remove", f"{TRAINING_ARGS_JSON} is missing"),
        ("optimizer.pt", "remove", "optimizer.pt is missing, so the run would not continue where it stopped"),
        ("trainer_state.json", "truncate", r"trainer_state.json is damaged \("),
        ("rng_state.pth", "truncate", r"rng_state.pth is damaged \("),
        ("optimizer.pt", "flip", r"optimizer.pt is damaged \("),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(
    one_step_checkpoint: tuple[FinetuneJob, Path], tmp_path: Path, name: str, damage: str, message: str
) -> None:
    import shutil

    job, checkpoint = one_step_checkpoint
    copy = shutil.copytree(checkpoint, tmp_path / checkpoint.name)
    path = copy / name
    if damage == "remove":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # one byte flipped inside the archive's data
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"cannot resume from {copy}: {message}"):
        run.check_resumable(copy, run.training_arguments(job, eval_data=False), _adapter(job))


def test_a_folder_holding_checkpoints_needs_resume(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(KernelCoreError, match=f"{tmp_path} already holds checkpoints of a run: pass --resume to continue it"):
        _finetune(_job(tiny_model, data, tmp_path, max_steps=1))


def test_resume_without_a_checkpoint_starts_from_scratch(
    tiny_model: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=run.__name__):
        report = _finetune(dataclasses.replace(_job(tiny_model, data, tmp_path, max_steps=1), resume=True))
    assert f"--resume: no checkpoint under {tmp_path}, starting from scratch" in caplog.text
    assert report.resumed_from is None and report.global_step == 1
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_streaming_needs_max_steps_and_then_trains_that_many(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    job = dataclasses.replace(_job(tiny_model, data, tmp_path / "out"), streaming=True)
    with pytest.raises(KernelCoreError, match="--streaming .* --max-steps N"):
        _finetune(job)
    out = io.StringIO()
    report = run_finetune(dataclasses.replace(job, training_args=[*job.training_args, ("flags", {"max_steps": 2})]), out=out)
    assert report.global_step == 2 and len(report.losses) == 2
    assert "streamed training rows" in out.getvalue()


@pytest.fixture(scope="module")
def finished(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The output folder of a finished run with an eval set, a checkpoint and TensorBoard reports."""
    folder = tmp_path_factory.mktemp("finished")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Row {i}:", "completion": f" {i}"}) + "\n" for i in range(4)))
    output = folder / "out"
    history = _kcore(tiny_model, data, output, "--eval-data", str(data), "--max-steps", "2", "--save-steps", "2",
                     "--set", "report_to=tensorboard")
    return output, history


def test_the_adapter_comes_with_its_state_arguments_and_plot_and_no_pickle(finished: tuple[Path, list[dict[str, Any]]]) -> None:
    import matplotlib.image

    output, history = finished
    assert sorted(path.name for path in output.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "loss.png", "runs", "trainer_state.json",
        TRAINING_ARGS_JSON,
    ]
    assert [record["step"] for record in history if "loss" in record] == [1, 2]
    assert [record["step"] for record in history if "eval_loss" in record] == [2]
    arguments = json.loads((output / TRAINING_ARGS_JSON).read_text())
    assert arguments["learning_rate"] == 1e-2 and arguments["world_size"] == 1 and arguments["output_dir"] == str(output)
    assert (output / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(output / "loss.png").shape[:2] == (400, 700)
    config, tensors = read_adapter(output)
    assert config["r"] == 4 and tensors


def test_report_to_tensorboard_writes_the_losses(finished: tuple[Path, list[dict[str, Any]]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, history = finished
    [events] = {path.parent for path in (output / "runs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(accumulator.Tags()["scalars"])
    train = accumulator.Scalars("train/loss")
    assert [event.step for event in train] == [1, 2]
    assert [event.value for event in train] == pytest.approx(_records(history, "loss"))
    [evaluated] = accumulator.Scalars("eval/loss")
    [eval_loss] = [record["eval_loss"] for record in history if "eval_loss" in record]
    assert (evaluated.step, evaluated.value) == (2, pytest.approx(eval_loss))
