"""``kcore generate --adapter PATH``: the adapter's greedy text, the rank taken from the adapter
unless ``--max-lora-rank`` says otherwise, and a bad folder as one error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.cli import main
from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import ADAPTERS, make_adapter

PROMPT = "Hello, my name is"
ARGS = ("--kv-cache-memory", "0.01", "--no-chat", "--max-tokens", "8")


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("cli") / "attn32", 3, **ADAPTERS["attn32"])


def test_generate_with_an_adapter(tiny_model, adapter, capsys):
    llm = LLM(str(tiny_model), enable_lora=True, max_lora_rank=32, num_kv_blocks=32)
    llm.load_adapter("a", adapter)
    params = SamplingParams(temperature=0, max_tokens=8)
    with_adapter, base = (llm.generate([PROMPT], params, adapter=a)[0].outputs[0].text for a in ("a", None))
    assert with_adapter != base
    assert main(["generate", "--model", str(tiny_model), *ARGS, "--adapter", str(adapter), PROMPT]) == 0
    assert capsys.readouterr().out == with_adapter + "\n"  # rank 32 accepted: taken from the adapter
    assert main(["generate", "--model", str(tiny_model), *ARGS, PROMPT]) == 0
    assert capsys.readouterr().out == base + "\n"


def test_max_lora_rank_below_the_adapters_is_one_error_line(tiny_model, adapter, capsys):
    argv = ["generate", "--model", str(tiny_model), *ARGS, "--adapter", str(adapter), "--max-lora-rank", "16", PROMPT]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("kcore: error: adapter 'cli-adapter'") and "exceeds max_lora_rank 16" in captured.err


def test_a_bad_adapter_folder_is_one_error_line(tiny_model, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_model), *ARGS, "--adapter", str(tmp_path / "none"), PROMPT]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "does not exist" in captured.err
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert main(["generate", "--model", str(tiny_model), *ARGS, "--adapter", str(tmp_path / "pickled"), PROMPT]) == 2
    assert "is a pickle file" in capsys.readouterr().err


def test_max_lora_rank_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--max-lora-rank", "0", PROMPT])
    assert "argument --max-lora-rank:" in capsys.readouterr().err


def test_generate_with_a_prompt_learning_adapter(tiny_model, tmp_path, capsys):
    """A prefix-tuning adapter with more virtual tokens than the default slots: the slots are
    sized for it, and the text is the engine's."""
    from kernel_core_sdk.hf_oracle import make_prompt_adapter

    folder = make_prompt_adapter(tiny_model, tmp_path / "prefix", 4, "PrefixTuningConfig", num_virtual_tokens=70)
    llm = LLM(str(tiny_model), enable_lora=True, num_kv_blocks=32, max_virtual_tokens=70)
    llm.load_adapter("a", folder)
    want = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8), adapter="a")[0].outputs[0].text
    assert main(["generate", "--model", str(tiny_model), *ARGS, "--adapter", str(folder), PROMPT]) == 0
    assert capsys.readouterr().out == want + "\n"
