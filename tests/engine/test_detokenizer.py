"""Incremental detokenization: deltas never split a character, and the prompt's text followed by
every delta is exactly ``decode(prompt + output)``, with SmolLM2's byte-level BPE and with
Llama-2-style (Metaspace, byte-fallback) decoders."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer

from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.models.embedded import embedded_model_path

BROKEN = "\ufffd"
TEXTS = [
    "Héllo wörld 👋🏽 naïve café, crème brûlée — ça va? 🎉🧑‍🚀!",
    "日本語のテキストと中文字符测试，한국어도 조금.",
    "Ünïcödé ☃ ∑ 😀😀😀 Ελληνικά, русский, العربية",
    "  leading spaces\n\n\tand tabs  ",
]


@pytest.fixture(scope="module")
def tokenizer(embedded_model_cache: Path) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
        return AutoTokenizer.from_pretrained(embedded_model_path(convert=False))


def stream(tokenizer: Any, prompt: Sequence[int], output: Sequence[int], skip: bool = True) -> list[str]:
    """Every delta, the flushed tail last."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
    return [detokenizer.step(token) for token in output] + [detokenizer.flush()]


def expected_output(tokenizer: Any, prompt: Sequence[int], output: Sequence[int], skip: bool) -> str:
    prompt_text = tokenizer.decode(list(prompt), skip_special_tokens=skip).rstrip(BROKEN)
    full = tokenizer.decode(list(prompt) + list(output), skip_special_tokens=skip)
    assert full.startswith(prompt_text)
    return full[len(prompt_text) :]


def test_random_token_sequences_concatenate_to_decode(tokenizer: Any) -> None:
    rng = random.Random(0)
    special = tokenizer.all_special_ids
    for _ in range(1500):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 25))]
        if rng.random() < 0.3:
            ids[rng.randrange(len(ids))] = rng.choice(special)
        cut = rng.randint(0, len(ids) - 1)
        skip = rng.random() < 0.5
        deltas = stream(tokenizer, ids[:cut], ids[cut:], skip)
        assert "".join(deltas) == expected_output(tokenizer, ids[:cut], ids[cut:], skip), (ids, cut, skip)


@pytest.mark.parametrize("text", TEXTS)
def test_real_text_streams_whole_characters(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    for cut in range(len(ids)):
        deltas = stream(tokenizer, ids[:cut], ids[cut:])
        assert not any(BROKEN in delta for delta in deltas)
        assert tokenizer.decode(ids[:cut]).rstrip(BROKEN) + "".join(deltas) == text


def test_split_characters_are_held_back(tokenizer: Any) -> None:
    ids = tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE splits the emoji
    assert stream(tokenizer, [], ids) == [""] * (len(ids) - 1) + ["🎉", ""]


def test_chat_prompt_then_answer(tokenizer: Any) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)[
        "input_ids"
    ]
    answer = tokenizer.encode("Bonjour 👋 — ça va ?", add_special_tokens=False)
    deltas = stream(tokenizer, prompt, [*answer, tokenizer.eos_token_id])
    assert "".join(deltas) == "Bonjour 👋 — ça va ?"
    assert "".join(stream(tokenizer, prompt, [*answer, tokenizer.eos_token_id], skip=False)).endswith(
        "<|im_end|>"
    )


def test_space_at_the_prompt_boundary_is_kept(tokenizer: Any) -> None:
    prompt = tokenizer.encode("Hello", add_special_tokens=False)
    assert (
        "".join(stream(tokenizer, prompt, tokenizer.encode(" world", add_special_tokens=False))) == " world"
    )


def test_prompt_ending_inside_a_character(tokenizer: Any) -> None:
    ids = tokenizer.encode("Rocket 🚀 launch", add_special_tokens=False)
    cut = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith(BROKEN))
    deltas = stream(tokenizer, ids[:cut], ids[cut:])
    assert "".join(deltas).startswith("🚀") and not any(BROKEN in delta for delta in deltas)
    assert tokenizer.decode(ids[:cut]).rstrip(BROKEN) + "".join(deltas) == "Rocket 🚀 launch"


def test_output_ending_inside_a_character_is_flushed_as_decode_renders_it(tokenizer: Any) -> None:
    ids = tokenizer.encode("ok 🚀", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    deltas = [detokenizer.step(token) for token in ids[:-1]]
    assert "".join(deltas) == "ok"  # the split rocket is held back...
    assert detokenizer.flush() == tokenizer.decode(ids[:-1])[len("ok") :]  # ...until the end
    assert detokenizer.flush() == ""


def test_metaspace_decoder_keeps_the_space_after_the_prompt() -> None:
    tokenizer = Tokenizer(models.WordLevel({"▁Hello": 0, "▁world": 1, "!": 2, "<unk>": 3}, unk_token="<unk>"))
    tokenizer.decoder = decoders.Metaspace()
    assert tokenizer.decode([1]) == "world"  # alone, the leading space is dropped
    assert stream(tokenizer, [0], [1, 2]) == [" world", "!", ""]
    assert stream(tokenizer, [], [0, 1, 2]) == ["Hello", " world", "!", ""]


def test_byte_fallback_character_split_between_prompt_and_output() -> None:
    vocab = {"<unk>": 0, "▁Hi": 1, "<0xF0>": 2, "<0x9F>": 3, "<0x98>": 4, "<0x80>": 5}
    tokenizer = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    assert stream(tokenizer, [1, 2], [3, 4, 5, 1]) == ["", "", "😀", " Hi", ""]
