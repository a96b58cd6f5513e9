"""Incremental detokenization under arbitrary input (hypothesis), with SmolLM2's tokenizer:
for any Unicode text and any cut between prompt and output, and for any token id sequence
(special tokens skipped or kept), the deltas concatenate to exactly what a full ``decode``
gives; a lone surrogate, which is no character, is refused naming the prompt wherever text
enters the engine."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError
from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams

BROKEN = "\ufffd"
#: The autouse plugin-environment fixture is function-scoped; it holds no state between examples.
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = settings(FAST, max_examples=30000)

#: Pieces plain random text rarely holds: multi-token characters, ZWJ and modifier sequences,
#: combining marks, scripts, controls, the special tokens' own spelling, U+FFFD itself.
PIECES = [
    "👋🏽", "🧑‍🚀", "🇫🇷", "e\u0301", "a\u0308\u0301", "日本語", "中文", "한국어", "العربية", "\u200b", "\u00a0",
    "\x00", "\x1b[0m", "\r\n", "\t", "  ", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "\ufffd", "\U0010ffff", "Å",
]
VALID_CHARACTERS = st.characters(exclude_categories=("Cs",))  # every code point but surrogates
TEXT = st.lists(st.one_of(st.text(VALID_CHARACTERS, max_size=6), st.sampled_from(PIECES)), max_size=8).map("".join)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


def stream(tokenizer: Any, prompt: Sequence[int], output: Sequence[int], skip: bool) -> list[str]:
    """Every delta, the flushed tail last."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
    return [detokenizer.step(token) for token in output] + [detokenizer.flush()]


def expected_output(tokenizer: Any, prompt: Sequence[int], output: Sequence[int], skip: bool) -> str:
    """The output's text as a full decode shows it: decode(prompt + output) less the prompt's
    text (less the start of a character the prompt ends inside)."""
    prompt_text = tokenizer.decode(list(prompt), skip_special_tokens=skip).rstrip(BROKEN)
    full = tokenizer.decode(list(prompt) + list(output), skip_special_tokens=skip)
    assert full.startswith(prompt_text)
    return full[len(prompt_text) :]


def lost_characters(tokenizer: Any, text: str) -> set[str]:
    """Characters the tokenizer drops: SmolLM2's vocabulary lacks a few bytes (0x04, 0x06, 0x13,
    0x14, 0x16, 0x1d, 0xf1, 0xf2, ...), so those controls and every code point of planes 4-11
    vanish at encoding, silently, as in every engine using this tokenizer."""
    return {ch for ch in set(text) if tokenizer.decode(tokenizer.encode(ch, add_special_tokens=False)) != ch}


def check_text(tokenizer: Any, text: str, cut_fraction: float, skip: bool) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    lost = lost_characters(tokenizer, text)
    if not lost:  # byte-level BPE otherwise loses nothing
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    cut = int(cut_fraction * len(ids))
    deltas = stream(tokenizer, ids[:cut], ids[cut:], skip)
    assert "".join(deltas) == expected_output(tokenizer, ids[:cut], ids[cut:], skip)
    if BROKEN not in text and not lost:
        assert not any(BROKEN in delta for delta in deltas), "a delta released half a character"
    if cut == 0 and not skip and not lost:
        assert "".join(deltas) == text


@FAST
@given(text=TEXT, cut_fraction=st.floats(0, 1, exclude_max=True), skip=st.booleans())
def test_any_text_streams_to_its_full_decode(tokenizer: Any, text: str, cut_fraction: float, skip: bool) -> None:
    check_text(tokenizer, text, cut_fraction, skip)


@pytest.mark.slow
@LONG
@given(text=TEXT, cut_fraction=st.floats(0, 1, exclude_max=True), skip=st.booleans())
def test_any_text_long_run(tokenizer: Any, text: str, cut_fraction: float, skip: bool) -> None:
    check_text(tokenizer, text, cut_fraction, skip)


#: Token ids, special ones (0, 1, 2) and byte tokens that split characters favoured.
TOKEN_IDS = st.lists(st.one_of(st.integers(0, 49151), st.sampled_from([0, 1, 2]), st.integers(3, 300)), max_size=30)


def check_ids(tokenizer: Any, ids: list[int], cut_fraction: float, skip: bool) -> None:
    cut = int(cut_fraction * len(ids))
    assert "".join(stream(tokenizer, ids[:cut], ids[cut:], skip)) == expected_output(tokenizer, ids[:cut], ids[cut:], skip)


@FAST
@given(ids=TOKEN_IDS, cut_fraction=st.floats(0, 1, exclude_max=True), skip=st.booleans())
# Found by the long run: a prompt ending inside a character (byte token 111), then four skipped
# special tokens, left the byte out of the context window and the output lost the U+FFFD.
@example(ids=[111] + [0] * 9, cut_fraction=0.5, skip=True)
def test_any_token_ids_stream_to_their_full_decode(tokenizer: Any, ids: list[int], cut_fraction: float, skip: bool) -> None:
    check_ids(tokenizer, ids, cut_fraction, skip)


@pytest.mark.slow
@LONG
@given(ids=TOKEN_IDS, cut_fraction=st.floats(0, 1, exclude_max=True), skip=st.booleans())
def test_any_token_ids_long_run(tokenizer: Any, ids: list[int], cut_fraction: float, skip: bool) -> None:
    check_ids(tokenizer, ids, cut_fraction, skip)


# -- lone surrogates where text enters the engine ---------------------------------------------

SURROGATES = st.characters(categories=("Cs",))
_ids = itertools.count()


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> LLM:
    return LLM(str(tiny_model), num_kv_blocks=64, max_model_len=256)


@FAST
@given(head=TEXT, surrogate=SURROGATES, tail=TEXT)
def test_a_lone_surrogate_in_a_prompt_is_refused_naming_the_prompt(llm: LLM, head: str, surrogate: str, tail: str) -> None:
    engine: LLMEngine = llm.engine
    request_id = f"r{next(_ids)}"
    with pytest.raises(InvalidRequestError, match=r"prompt holds a lone surrogate") as caught:
        engine.add_request(request_id, head + surrogate + tail, SamplingParams(max_tokens=1))
    assert request_id in str(caught.value) and repr(surrogate) in str(caught.value)
    assert not engine.has_unfinished_requests()


@FAST
@given(text=TEXT)
def test_any_valid_text_is_accepted_as_a_prompt(llm: LLM, text: str) -> None:
    assume(text and len(llm.get_tokenizer().encode(text, add_special_tokens=False)) < 256)
    engine: LLMEngine = llm.engine
    request_id = f"r{next(_ids)}"
    engine.add_request(request_id, text, SamplingParams(max_tokens=1))
    assert engine.abort_request(request_id)
    engine.step()  # retires the aborted request
    assert not engine.has_unfinished_requests()


def test_generate_and_chat_answer_a_lone_surrogate_with_an_error_output(llm: LLM) -> None:
    """The offline API turns a refused prompt into an error output; its neighbours still run."""
    outputs = llm.generate(["fine", "bad \ud800 prompt"], SamplingParams(temperature=0, max_tokens=2))
    assert outputs[0].outputs[0].finish_reason == "length"
    assert outputs[1].outputs[0].finish_reason == "error"
    assert "lone surrogate '\\ud800' at index 4" in outputs[1].outputs[0].error
    (chat,) = llm.chat([{"role": "user", "content": "hi \udfff"}], SamplingParams(max_tokens=2))
    assert chat.outputs[0].finish_reason == "error" and "lone surrogate '\\udfff'" in chat.outputs[0].error
