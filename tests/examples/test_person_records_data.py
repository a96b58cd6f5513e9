"""The person-records LoRA demo data is exactly what its generator writes, and its eval split is held out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "person-records"


@pytest.fixture(scope="module")
def make_data():
    spec = importlib.util.spec_from_file_location("person_records_make_data", EXAMPLE / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (EXAMPLE / name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_committed_files_equal_regenerated(make_data, name):
    train, held_out = make_data.make_rows()
    expected = make_data.dumps(train if name == "train.jsonl" else held_out)
    assert (EXAMPLE / name).read_text(encoding="utf-8") == expected, (
        f"{name} is stale: run python examples/person-records/make_data.py"
    )


def test_generation_is_deterministic(make_data):
    assert make_data.make_rows() == make_data.make_rows()


def test_check_mode_passes_on_committed_files(make_data):
    assert make_data.main(["--check"]) == 0


def test_rows_are_prompt_completion_pairs():
    for name in ("train.jsonl", "eval.jsonl"):
        for row in _read(name):
            assert set(row) == {"prompt", "completion"}
            assert row["prompt"].endswith("\n") and row["completion"] == row["completion"].strip()


def test_sizes():
    assert 200 <= len(_read("train.jsonl")) <= 500
    assert 40 <= len(_read("eval.jsonl")) <= 60


def test_no_eval_prompt_in_train():
    train_prompts = {row["prompt"] for row in _read("train.jsonl")}
    eval_prompts = [row["prompt"] for row in _read("eval.jsonl")]
    assert not train_prompts & set(eval_prompts)
    assert len(set(eval_prompts)) == len(eval_prompts)
    assert len(train_prompts) == len(_read("train.jsonl"))


def test_eval_names_and_cities_never_occur_in_train(make_data):
    train_text = (EXAMPLE / "train.jsonl").read_text(encoding="utf-8")
    for row in _read("eval.jsonl"):
        fields = dict(part.split(": ", 1) for part in row["completion"].split("; "))
        assert set(fields) == {"name", "age", "city"}
        assert fields["name"] in make_data.EVAL_NAMES and fields["city"] in make_data.EVAL_CITIES
    for word in make_data.EVAL_NAMES + make_data.EVAL_CITIES:
        assert word not in train_text, word
