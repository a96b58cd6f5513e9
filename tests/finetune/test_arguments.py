"""``TrainingArguments`` layers: every field reachable, later layers winning, and each mistake
refused by name before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_core.finetune import arguments
from kernel_core.finetune.arguments import TrainingArgumentsError


def _build(tmp_path: Path, *layers: tuple[str, dict]) -> object:
    return arguments.build(tmp_path / "out", [("kernel-core defaults", {**arguments.kcore_defaults(), "use_cpu": True}), *layers])


def test_defaults_then_layers_in_order(tmp_path: Path) -> None:
    args = _build(
        tmp_path,
        ("file", {"learning_rate": 1e-3, "logging_steps": 5, "lr_scheduler_type": "linear"}),
        ("flags", {"learning_rate": 5e-4}),
        ("--set", arguments.parse_set(["logging_steps=7", "report_to=tensorboard", "warmup_steps=0.1"])),
    )
    assert args.output_dir == str(tmp_path / "out")
    assert args.learning_rate == 5e-4 and args.logging_steps == 7
    assert args.lr_scheduler_type.value == "linear" and args.report_to == ["tensorboard"]
    assert args.warmup_steps == 0.1 and args.per_device_train_batch_size == 4  # a kernel-core default


def test_every_field_is_reachable() -> None:
    from transformers import TrainingArguments

    import dataclasses

    names = {field.name for field in dataclasses.fields(TrainingArguments) if field.init}
    assert set(arguments.fields()) == names
    listing = arguments.describe()
    assert all(f"\n{name} (" in f"\n{listing}" for name in names)


def test_set_values_are_typed_by_json_then_by_the_field() -> None:
    values = arguments.check(arguments.parse_set(["learning_rate=1e-4", "bf16=true", "save_steps=10", "run_name=x=y"]), "--set")
    assert values == {"learning_rate": 1e-4, "bf16": True, "save_steps": 10, "run_name": "x=y"}
    assert arguments.check({"learning_rate": "3e-4"}, "file") == {"learning_rate": 3e-4}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lerning_rate": 1}, r"--set: 'lerning_rate' is not a TrainingArguments field \(did you mean 'learning_rate'\?\)"),
        ({"learning_rate": "fast"}, r"--set: learning_rate='fast' is invalid"),
        ({"num_train_epochs": [1]}, r"--set: num_train_epochs=\[1\] is invalid"),
        ({"output_dir": "/elsewhere"}, r"--set: output_dir is set by --output"),
    ],
)
def test_bad_fields_are_named(values: dict, message: str) -> None:
    with pytest.raises(TrainingArgumentsError, match=message):
        arguments.check(values, "--set")


def test_enum_fields_take_their_values_only() -> None:
    assert arguments.check({"save_strategy": "steps"}, "--set")["save_strategy"].value == "steps"
    with pytest.raises(TrainingArgumentsError, match=r"--set: save_strategy='sometimes' is invalid: .*'steps'"):
        arguments.check({"save_strategy": "sometimes"}, "--set")


def test_inconsistent_combination_names_the_sources(tmp_path: Path) -> None:
    with pytest.raises(TrainingArgumentsError, match=r"invalid training arguments \(from kernel-core defaults, file\).*eval"):
        _build(tmp_path, ("file", {"load_best_model_at_end": True, "save_strategy": "steps", "eval_strategy": "no"}))


@pytest.mark.parametrize("item", ["learning_rate", "=1", ""])
def test_set_needs_key_and_value(item: str) -> None:
    with pytest.raises(TrainingArgumentsError, match="expected key=value"):
        arguments.parse_set([item])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingArgumentsError, match="does not exist"):
        arguments.read_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1e-4,\n}')
    with pytest.raises(TrainingArgumentsError, match=rf"{bad}:2: not valid JSON"):
        arguments.read_file(bad)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(TrainingArgumentsError, match="must hold a JSON object"):
        arguments.read_file(listed)
