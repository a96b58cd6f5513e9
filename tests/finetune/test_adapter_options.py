"""``kcore finetune --method M``: the adapter's options are the method's own config fields, from
``--adapter-config``, the shortcut flags and ``--set``, routed and validated by the method; no LoRA
field reaches another method. Checked with LoRA and with the tiny ``scale`` tuner plugin
(``scale_tuner.py``), installed by entry point as a third party's method would be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kernel_core.cli import main
from kernel_core.finetune import adapter_options
from kernel_core.finetune.adapter_options import AdapterOptionsError
from kernel_core.peft.config import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("kcore: error: ") and err.count("\n") == 1, err
    return err.removeprefix("kcore: error: ").rstrip("\n")


def test_show_config_lists_each_field_with_type_default_flag_and_meaning(scale_tuner: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--method", "lora", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lora (peft_type LORA): ")
    listed = [line.split(" (")[0] for line in out.splitlines()[2:] if not line.startswith("    ")]
    assert listed == list(get_method("lora").config_class.model_fields)
    assert "\nr (int, default 8, --r)\n    Rank of the update.\n" in out
    assert "\nlora_alpha (int | float, default 8, --alpha)\n" in out
    assert "\ntarget_modules (list[str] | str | None, default 'all-linear' (kcore finetune's), --target-modules)\n" in out

    assert main(["finetune", "--method", scale_tuner, "--show-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scale (peft_type SCALE): A learned scale per output channel.\nScaleConfig fields")
    assert "\ninit_scale (float, default 1.0)\n    Every scale's first value; 1 starts as the base model.\n" in out
    assert "\ntarget_modules (list[str] | str | None, default ['v_proj'], --target-modules)\n" in out
    assert "lora_alpha" not in out and "--r" not in out


def test_an_unknown_method_is_named_with_the_installed_ones(scale_tuner: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--method", "nope", "--show-config"]) == 2
    error = _one_line_error(capsys)
    assert "'nope'" in error and "lora" in error and "scale" in error


def test_help_says_how_to_see_a_methods_fields(scale_tuner: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert "--show-config" in out and "--adapter-config FILE.json" in out and "--set adapter.KEY=" in out
    [line] = [line for line in out.splitlines() if line.startswith("Installed PEFT methods (--method; --method M --show-config lists M's fields): ")]
    assert {"lora", "scale"} <= set(line.split(": ", 1)[1].split(", "))


def test_set_keys_go_to_the_adapter_or_to_training_by_field(scale_tuner: str) -> None:
    lora, scale = get_method("lora"), get_method(scale_tuner)
    values = {"r": 4, "learning_rate": 1e-3, "adapter.bias": "all", "training.seed": 3, "use_rslora": True}
    assert adapter_options.route_set(values, lora) == ({"r": 4, "bias": "all", "use_rslora": True}, {"learning_rate": 1e-3, "seed": 3})
    assert adapter_options.route_set({"adapter.seed": 1, "training.seed": 2}, scale) == ({"seed": 1}, {"seed": 2})
    assert adapter_options.route_set({"init_scale": 0.5}, scale) == ({"init_scale": 0.5}, {})


@pytest.mark.parametrize(
    ("method", "values", "message"),
    [
        ("scale", {"seed": 1}, "--set seed: both the scale method's config and TrainingArguments have a field 'seed'; "
                               "say which: --set adapter.seed=... or --set training.seed=..."),
        ("lora", {"rank": 4}, "--set rank: not a field of LoraConfig (the lora method's options; kcore finetune --method lora "
                              "--show-config lists them) nor of TrainingArguments (kcore finetune --list-training-args lists them)"),
        ("scale", {"r": 4}, "--set r: not a field of ScaleConfig (the scale method's options; kcore finetune --method scale "
                            "--show-config lists them) nor of TrainingArguments"),
        ("lora", {"adapter.learning_rate": 1}, "--set adapter.learning_rate: 'learning_rate' is not a field of LoraConfig"),
        ("lora", {"inference_mode": True}, "--set: inference_mode is set by kcore finetune (the adapter trains), not here"),
    ],
)
def test_a_set_key_no_field_or_both_fields_have_is_refused_naming_it(scale_tuner: str, method: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(AdapterOptionsError) as error:
        adapter_options.route_set(values, get_method(method))
    assert str(error.value).startswith(message)


def test_shortcuts_pass_only_what_was_given_and_only_to_a_method_with_the_field(scale_tuner: str) -> None:
    lora, scale = get_method("lora"), get_method(scale_tuner)
    given = {"--r": 4, "--alpha": None, "--dropout": 0.1, "--target-modules": None}
    assert adapter_options.shortcut_values(given, lora) == {"r": 4, "lora_dropout": 0.1}
    assert adapter_options.shortcut_values({"--r": None, "--target-modules": ["q_proj"]}, scale) == {"target_modules": ["q_proj"]}
    for flag, field in (("--r", "r"), ("--alpha", "lora_alpha"), ("--dropout", "lora_dropout")):
        with pytest.raises(AdapterOptionsError, match=f"^{flag} sets {field}, which the scale method does not have"):
            adapter_options.shortcut_values({flag: 1}, scale)


def test_defaults_then_layers_later_winning(scale_tuner: str) -> None:
    lora = adapter_options.build("lora", [])
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (8, 8, "all-linear")  # LoraConfig's, and kcore's targets
    layers = [("--adapter-config f", {"r": 4, "lora_alpha": 16, "use_dora": True}), ("flags", {"r": 2}), ("--set", {"use_dora": False})]
    lora = adapter_options.build("lora", layers)
    assert (lora.r, lora.lora_alpha, lora.use_dora, lora.target_modules) == (2, 16, False, "all-linear")
    scale = adapter_options.build(scale_tuner, [])
    assert (scale.target_modules, scale.init_scale) == (["v_proj"], 1.0)  # its own default, not all-linear
    with pytest.raises(AdapterOptionsError, match=r"^adapter options \(from flags, --set\): invalid ScaleConfig: init_scale: "
                                                  r"Input should be greater than 0 \(got -1\)"):
        adapter_options.build(scale_tuner, [("flags", {"target_modules": ["q_proj"]}), ("--set", {"init_scale": -1})])


def test_a_peft_adapter_config_file_gives_its_method_fields(tmp_path: Path) -> None:
    import peft

    peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_rslora=True, inference_mode=True).save_pretrained(tmp_path)
    values = adapter_options.read_file(tmp_path / "adapter_config.json", get_method("lora"))
    # peft's keys this LoraConfig lacks are left out when off (megatron_core, qalora_group_size, ...),
    # and so are the ones kcore finetune sets (inference_mode, base_model_name_or_path)
    assert values["r"] == 4 and values["lora_alpha"] == 8 and values["target_modules"] == ["q_proj"] and values["use_rslora"] is True
    assert set(values) <= set(get_method("lora").config_class.model_fields) - set(adapter_options.OWNED)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"peft_type": "IA3", "r": 4}, "{path} has peft_type 'IA3', but --method lora writes 'LORA'"),
        ({"r": 4, "rank": 8, "use_qalora": False}, "{path}: 'rank' is not a field of LoraConfig (the lora method's options; "
                                                   "kcore finetune --method lora --show-config lists them)"),
        ({"r": 0}, "{path}: invalid LoraConfig: r: Input should be greater than 0 (got 0)"),
        ({"use_qalora": True}, "{path}: 'use_qalora' is not a field of LoraConfig"),  # PEFT's key, switched on
        ([1], "{path} must hold a JSON object of LoraConfig fields"),
        ("{", "{path}:1: not valid JSON"),
    ],
)
def test_a_bad_adapter_config_file_is_refused_naming_the_culprit(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "adapter.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(AdapterOptionsError) as error:
        adapter_options.read_file(path, get_method("lora"))
    assert str(error.value).startswith(message.format(path=f"--adapter-config {path}"))


def test_bad_options_stop_the_command_before_the_model_loads(scale_tuner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nothing = ["--model", "/nonexistent/model", "--data", "/nonexistent/train.jsonl", "--output", str(tmp_path / "out")]
    assert main(["finetune", *nothing, "--method", scale_tuner, "--alpha", "16"]) == 2
    assert _one_line_error(capsys).startswith("--alpha sets lora_alpha, which the scale method does not have")
    assert main(["finetune", *nothing, "--set", "lora_dropout=2"]) == 2
    assert _one_line_error(capsys).startswith("adapter options (from --set): invalid LoraConfig: lora_dropout: ")


@pytest.fixture
def train(tiny_model: Path, tmp_path: Path, write_jsonl: Any, capital_rows: list[dict[str, Any]]) -> Any:
    data = write_jsonl(tmp_path / "train.jsonl", capital_rows)

    def run(output: Path, *flags: str) -> int:
        argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--lr", "1e-2",
                "--batch-size", "4", "--no-progress", *flags]
        return main(argv)

    return run


def test_another_method_trains_with_its_own_options_and_resume_checks_them(
    scale_tuner: str, train: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kernel_core.peft.state_dict import read_adapter

    output = tmp_path / "scale"
    assert train(output, "--method", scale_tuner, "--set", "init_scale=0.5", "--set", "adapter.seed=5", "--max-steps", "2",
                 "--save-steps", "1") == 0
    assert "scale on " in capsys.readouterr().out
    config, tensors = read_adapter(output)
    assert config["peft_type"] == "SCALE" and config["init_scale"] == 0.5 and config["seed"] == 5
    assert config["target_modules"] == ["v_proj"]  # the method's default: --target-modules was not given
    assert not {"r", "lora_alpha", "lora_dropout"} & set(config)
    assert sorted(tensors) == ["base_model.model.model.layers.0.self_attn.v_proj.scale_vector",
                               "base_model.model.model.layers.1.self_attn.v_proj.scale_vector"]
    assert all(not bool((tensor == 0.5).all()) for tensor in tensors.values())  # trained off their start

    cut = tmp_path / "cut"
    shutil.copytree(output / "checkpoint-1", cut / "checkpoint-1")
    flags = ["--set", "adapter.seed=5", "--max-steps", "2", "--resume"]
    assert train(cut, "--method", scale_tuner, "--set", "init_scale=0.25", *flags) == 2
    assert _one_line_error(capsys).startswith(
        f"cannot resume from {cut / 'checkpoint-1'}: its adapter was made with init_scale=0.5, this run has init_scale=0.25"
    )
    assert train(cut, "--max-steps", "2", "--resume") == 2
    assert "its adapter is SCALE, this run trains LORA" in _one_line_error(capsys)
    assert train(cut, "--method", scale_tuner, "--set", "init_scale=0.5", *flags) == 0  # the same options continue
    assert f"resuming from {cut / 'checkpoint-1'}" in capsys.readouterr().out
