"""``kcore bench lora`` end to end on the tiny model and a few prompts, and the W2 adapters it makes.

Only structure, token counts, adapter files and arithmetic are checked, never speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from kernel_core.bench import lora
from kernel_core.bench.adapters import MANIFEST, default_directory, ensure_adapters
from kernel_core.bench.workloads import AdapterSpec, adapter_spec, default_path, workload
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError

pytestmark = pytest.mark.skipif(not default_path().is_file(), reason=f"no shared workload file at {default_path()}")
PROMPTS, TOKENS = 3, 3
SPEC = AdapterSpec(
    count=8, rank=16, alpha=32, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)
SMALL = AdapterSpec(count=2, rank=4, alpha=8, targets=("q_proj", "down_proj"))


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "lora", *argv])


def _run(
    model: Path, adapter_dir: Path, out: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[dict[str, Any], str]:
    args = _parse(
        "--model", str(model), "--limit", str(PROMPTS), "--max-tokens", str(TOKENS), "--kv-cache-memory", "0.02",
        "--adapter-dir", str(adapter_dir), "--json", str(out), *argv,
    )
    assert args.func(args) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def _tensors(folder: Path) -> dict[str, Any]:
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def first_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One full-shape run (8 adapters made into an empty folder), shared by the checks below."""
    root = tmp_path_factory.mktemp("lora-bench")
    args = _parse(
        "--model", str(tiny_model), "--limit", str(PROMPTS), "--max-tokens", str(TOKENS), "--kv-cache-memory",
        "0.02", "--adapter-dir", str(root / "adapters"), "--json", str(root / "report.json"),
    )
    printed = io.StringIO()  # capsys is per test; this run is shared by the module
    with contextlib.redirect_stdout(printed):
        assert args.func(args) == 0
    return root / "adapters", json.loads((root / "report.json").read_text()), printed.getvalue()


def test_report_has_w1_and_w2_with_the_same_engine_settings(first_run: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = first_run
    assert report["benchmark"] == "lora" and report["full_workload"] is False
    w1, w2 = report["results"]
    assert (w1["workload"], w2["workload"]) == ("W1", "W2")
    for result in (w1, w2):
        assert (result["requests"], result["output_tokens"]) == (PROMPTS, PROMPTS * TOKENS)
        assert result["output_tok_s"] == pytest.approx(result["output_tokens"] / result["seconds"])
        total = result["prompt_tokens"] + result["output_tokens"]
        assert result["total_tok_s"] == pytest.approx(total / result["seconds"])
        assert (result["max_loras"], result["max_cpu_loras"]) == (8, 8)
        assert result["dtype"] == "float32"
    assert w1["prompt_tokens"] == w2["prompt_tokens"]  # the same prompts
    assert (w1["adapters"], w2["adapters"], w2["adapters_used"]) == (0, 8, PROMPTS)
    assert report["adapters"] == 8 and report["adapters_created"] == 8
    assert report["lora"] == {"rank": 16, "alpha": 32, "targets": list(SPEC.targets), "seed": 0}


def test_ratios_and_labelled_references(first_run: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = first_run
    w1, w2 = report["results"]
    ratios = report["ratios"]
    expected = {
        "w2_vs_w1": (w2["output_tok_s"], w1["output_tok_s"], ">= 0.8"),
        "ours_w2_vs_vllm_cpu_w2_reference": (w2["output_tok_s"], 11.9, ">= 4"),
        "vllm_cpu_w2_vs_w1_reference": (11.9, 50.9, None),
    }
    assert set(ratios) == set(expected)
    for key, (numerator, denominator, target) in expected.items():
        ratio = ratios[key]
        assert (ratio["numerator"], ratio["denominator"]) == (pytest.approx(numerator), pytest.approx(denominator))
        assert ratio["value"] == pytest.approx(numerator / denominator) and ratio["target"] == target
    references = {(r["workload"], r["output_tok_s"], r["seconds"]) for r in report["references"]}
    assert references == {("W1", 50.9, 161.0), ("W2", 11.9, 688.9)}
    assert all(r["measured_in_this_run"] is False for r in report["references"])


def test_printed_report_has_the_table_json_lines_and_anchor_command(
    tiny_model: Path, first_run: tuple[Path, dict[str, Any], str]
) -> None:
    adapter_dir, report, printed = first_run
    assert "NOT measured in this run" in printed and "reduced workload" in printed
    assert "max_loras = min(k, 8)" in printed
    assert [json.loads(line) for line in printed.splitlines() if line.startswith("{")] == report["results"]
    command = shlex.split(report["anchor_command"])
    assert Path(command[0]).resolve() == default_path().parent / "anchor_vllm.sh"
    assert command[1:5] == [str(tiny_model), "--dtype", "float32", "--w2"]
    assert command[5:] == [str(adapter_dir.resolve() / f"a{i}") for i in range(8)] == report["w2_adapter_paths"]
    assert report["anchor_command"] in printed


def test_adapters_are_peft_folders_with_w2_settings_and_nonzero_b(first_run: tuple[Path, dict[str, Any], str]) -> None:
    adapter_dir, _, _ = first_run
    assert sorted(p.name for p in adapter_dir.iterdir()) == [*(f"a{i}" for i in range(8)), MANIFEST]
    config = json.loads((adapter_dir / "a0" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 16, 32)
    assert sorted(config["target_modules"]) == sorted(SPEC.targets)
    tensors = _tensors(adapter_dir / "a0")
    b = [t for name, t in tensors.items() if "lora_B" in name]
    assert len(b) == 2 * 7 and all(t.abs().sum() > 0 for t in b)  # 2 layers x 7 targets
    assert not all((_tensors(adapter_dir / "a1")[k] == t).all() for k, t in tensors.items())


def test_a_second_run_reuses_the_adapters(
    tiny_model: Path, first_run: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter_dir, _, _ = first_run
    stamps = {p: p.stat().st_mtime_ns for p in adapter_dir.glob("a*/*")}
    report, printed = _run(tiny_model, adapter_dir, tmp_path / "again.json", capsys)
    assert report["adapters_created"] == 0 and "0 made in this run" in printed
    assert {p: p.stat().st_mtime_ns for p in adapter_dir.glob("a*/*")} == stamps


def test_sweep_runs_each_count_with_max_loras_capped(
    tiny_model: Path, first_run: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter_dir, _, _ = first_run
    report, printed = _run(
        tiny_model, adapter_dir, tmp_path / "sweep.json", capsys, "--adapters", "2", "--sweep", "1", "2", "5",
        "--max-loras", "2",
    )
    by_count = {r["adapters"]: r for r in report["results"]}
    assert sorted(by_count) == [0, 1, 2, 5] and report["sweep"] == [1, 2, 5]
    assert [by_count[k]["max_loras"] for k in (0, 1, 2, 5)] == [2, 1, 2, 2]  # W1 runs with W2's settings
    assert [by_count[k]["adapters_used"] for k in (1, 2, 5)] == [1, 2, PROMPTS]
    for run in by_count.values():
        assert run["max_cpu_loras"] >= max(run["adapters_used"], run["max_loras"])
    assert {"sweep_1_vs_w1", "sweep_5_vs_w1"} <= set(report["ratios"])
    assert report["ratios"]["w2_vs_w1"]["numerator"] == pytest.approx(by_count[2]["output_tok_s"])
    assert "max_loras = min(k, 2)" in printed and len(shlex.split(report["anchor_command"])) == 5 + 2


def test_bfloat16_runs_every_engine_and_the_anchor_command_in_bfloat16(
    tiny_model: Path, first_run: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter_dir, _, _ = first_run
    report, printed = _run(
        tiny_model, adapter_dir, tmp_path / "bf16.json", capsys, "--adapters", "2", "--dtype", "bfloat16"
    )
    assert report["dtype"] == "bfloat16" and [r["dtype"] for r in report["results"]] == ["bfloat16", "bfloat16"]
    assert shlex.split(report["anchor_command"])[2:4] == ["--dtype", "bfloat16"]
    assert report["dtype_support"].startswith("bfloat16: the CPU has") and report["dtype_support"] in printed


def test_float16_is_refused_on_a_cpu_without_float16_dot_products(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel_core.bench import machine

    monkeypatch.setattr(machine, "_lscpu", lambda: "Model name: Example EPYC\nFlags: avx2 avx512f avx512_bf16\n")
    args = _parse("--model", str(tmp_path / "no-model"), "--dtype", "float16", "--adapter-dir", str(tmp_path))
    with pytest.raises(KernelCoreError, match="float16 needs a CPU with amx_fp16 or avx512_fp16; Example EPYC"):
        args.func(args)


def test_sweep_without_counts_means_1_8_32_128() -> None:
    assert _parse("--sweep").sweep == [] and lora.SWEEP == (1, 8, 32, 128)
    assert _parse("--limit", "5").num_prompts == _parse("--num-prompts", "5").num_prompts == 5


def test_adapters_are_deterministic_and_remade_when_missing(tiny_model: Path, tmp_path: Path) -> None:
    one = ensure_adapters(tiny_model, SMALL, 3, seed=7, directory=tmp_path / "one")
    two = ensure_adapters(tiny_model, SMALL, 2, seed=7, directory=tmp_path / "two")
    assert (one.created, two.created) == (3, 2)
    shutil.rmtree(two.paths[1])
    again = ensure_adapters(tiny_model, SMALL, 3, seed=7, directory=tmp_path / "two")
    assert again.created == 2  # a1 was removed, a2 never made
    for a, b in zip(one.paths, again.paths):
        left, right = _tensors(a), _tensors(b)
        assert left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left)
    other_seed = ensure_adapters(tiny_model, SMALL, 1, seed=8, directory=tmp_path / "three")
    assert not all((_tensors(other_seed.paths[0])[k] == t).all() for k, t in _tensors(one.paths[0]).items())


def test_a_folder_made_for_other_settings_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    ensure_adapters(tiny_model, SMALL, 1, seed=0, directory=tmp_path / "set")
    with pytest.raises(KernelCoreError, match="other settings"):
        ensure_adapters(tiny_model, SMALL, 1, seed=1, directory=tmp_path / "set")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("")
    with pytest.raises(KernelCoreError, match="not empty"):
        ensure_adapters(tiny_model, SMALL, 1, directory=tmp_path / "busy")


def test_default_folder_is_in_the_cache_per_model_and_settings(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))
    made = ensure_adapters(tiny_model, SMALL, 1, seed=3)
    assert made.directory == default_directory(tiny_model, SMALL, 3).resolve()
    assert made.directory.is_relative_to(tmp_path / "cache" / "bench" / "lora-adapters")
    assert made.directory.name == "r4-alpha8-seed3" and made.paths == [made.directory / "a0"]


def test_w2_is_w1s_prompts_with_the_adapter_settings() -> None:
    path = default_path()
    assert adapter_spec(path) == SPEC
    w1, w2 = workload(path, "W1"), workload(path, "W2")
    assert w2.prompts == w1.prompts and (w2.max_tokens, w2.full) == (128, True)


# -- --mix: W2's adapters replaced by a mix of kinds (issue 15, point 6) ------------------------------


def test_mix_runs_w1_and_w2_on_two_adapters_of_each_served_kind(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kernel_core.bench.adapters import MIX, served_kinds

    report, printed = _run(tiny_model, tmp_path / "mix", tmp_path / "report.json", capsys, "--mix", "--limit", "8")
    kinds = [kind for kind in MIX if kind in served_kinds()]
    assert {"LORA", "IA3"} <= set(kinds)  # served by the tuners this repository installs
    assert list(report["mix_kinds"]) == kinds and report["mix_left_out"] == [k for k in MIX if k not in kinds]
    w1, w2 = report["results"]
    assert (w1["adapters"], w2["adapters"], w2["adapters_used"]) == (0, 2 * len(kinds), min(8, 2 * len(kinds)))
    assert (w1["output_tokens"], w2["output_tokens"]) == (8 * TOKENS, 8 * TOKENS)
    assert w1["max_loras"] == w2["max_loras"] == 2 * len(kinds)
    ratio = report["ratios"]["w2_mix_vs_w1"]
    assert ratio["value"] == pytest.approx(w2["output_tok_s"] / w1["output_tok_s"]) and ratio["target"] == ">= 0.8"
    made = [json.loads((Path(p) / "adapter_config.json").read_text()) for p in report["w2_adapter_paths"]]
    assert [c["peft_type"] for c in made] == kinds * 2
    assert all(c["num_virtual_tokens"] == 20 for c in made if c["peft_type"] in ("PROMPT_TUNING", "PREFIX_TUNING"))
    assert "2 adapters of each served kind: LORA (tuner 'lora'), IA3 (tuner 'ia3')" in printed
    again, _ = _run(tiny_model, tmp_path / "mix", tmp_path / "again.json", capsys, "--mix", "--limit", "8")
    assert again["adapters_created"] == 0 and report["adapters_created"] == 2 * len(kinds)


def test_mix_takes_no_adapter_count_or_sweep(tiny_model: Path, tmp_path: Path) -> None:
    for extra in (("--adapters", "3"), ("--sweep",)):
        args = _parse("--model", str(tiny_model), "--mix", *extra)
        with pytest.raises(KernelCoreError, match="--mix sets W2's adapters itself"):
            args.func(args)
