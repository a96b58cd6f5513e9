"""Stop handling: token stops, EOS, max_tokens and stop strings end a completion with the right
reason; the text is cut at the stop string; streamed text is never taken back."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.engine.stop import StopChecker
from kernel_core.models.embedded import embedded_model_path
from kernel_core.sampling_params import SamplingParams

EOS = 0


class Pieces:
    """Stand-in detokenizer: a ``str`` token is its own text, an ``int`` token renders as ``<id>``."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}

    def token(self, piece: str | int) -> int:
        if isinstance(piece, int):
            self.texts[piece] = f"<{piece}>"
            return piece
        token_id = 1000 + len(self.texts)
        self.texts[token_id] = piece
        return token_id

    def step(self, token_id: int) -> str:
        return self.texts[token_id]

    def flush(self) -> str:
        return ""


def run(pieces: Sequence[str | int], max_tokens: int = 100, **params: Any) -> tuple[StopChecker, list[str]]:
    """Feed ``pieces`` until the checker finishes; return it and every delta it released."""
    checker = StopChecker(SamplingParams(max_tokens=None, **params), max_tokens, eos_token_ids=[EOS])
    detokenizer = Pieces()
    deltas = []
    for piece in pieces:
        deltas.append(checker.append(detokenizer.token(piece), detokenizer))
        if checker.finished:
            break
    return checker, deltas


def test_stop_token_id_ends_with_its_id_and_stays_out_of_the_text() -> None:
    checker, deltas = run(["Hello", " world", 7, " more"], stop_token_ids=[7])
    assert (checker.finish_reason, checker.stop_reason, checker.text) == ("stop", 7, "Hello world")
    assert "".join(deltas) == "Hello world"
    checker, _ = run(["Hello", 7], stop_token_ids=[7], include_stop_str_in_output=True)
    assert checker.text == "Hello<7>"


def test_eos_ends_without_a_stop_reason_unless_ignored() -> None:
    checker, _ = run(["Hi", EOS, "!"])
    assert (checker.finish_reason, checker.stop_reason, checker.text) == ("stop", None, "Hi")
    checker, _ = run(["Hi", EOS, "!"], ignore_eos=True)
    assert not checker.finished and checker.text == "Hi<0>!"


def test_nothing_stops_the_first_min_tokens() -> None:
    checker, _ = run(["a", EOS, "b", EOS], min_tokens=2)
    assert checker.finish_reason == "stop" and checker.text == "a<0>b"
    checker, _ = run(["STOP", "x", "y"], min_tokens=2, stop="STOP")
    assert not checker.finished and checker.text == "STOPxy"


def test_max_tokens_ends_with_length_keeping_the_last_text() -> None:
    checker, deltas = run(["a", "b", "c", "d"], max_tokens=3)
    assert (checker.finish_reason, checker.stop_reason, checker.text) == ("length", None, "abc")
    assert deltas == ["a", "b", "c"]


def test_stop_string_spanning_tokens_cuts_the_text() -> None:
    checker, deltas = run(["Hel", "lo Wo", "rld"], stop=["o W"])
    assert (checker.finish_reason, checker.stop_reason, checker.text) == ("stop", "o W", "Hell")
    assert "".join(deltas) == "Hell"
    checker, _ = run(["Hel", "lo Wo", "rld"], stop=["o W"], include_stop_str_in_output=True)
    assert checker.text == "Hello W"


def test_earliest_stop_string_wins() -> None:
    checker, _ = run(["hello world"], stop=["world", "lo w"])
    assert (checker.stop_reason, checker.text) == ("lo w", "hel")


def test_stop_string_on_the_last_allowed_token_beats_length() -> None:
    checker, _ = run(["ab", "cSTOPd"], max_tokens=2, stop="STOP")
    assert (checker.finish_reason, checker.stop_reason, checker.text) == ("stop", "STOP", "abc")


def test_possible_start_of_a_stop_string_is_pending_until_resolved() -> None:
    checker = StopChecker(SamplingParams(stop=["END"]), max_tokens=100)
    detokenizer = Pieces()
    released = [checker.append(detokenizer.token(p), detokenizer) for p in ("abc", "E", "N")]
    assert released == ["abc", "", ""] and checker.pending == "EN" and checker.text == "abc"
    assert checker.append(detokenizer.token("X"), detokenizer) == "ENX" and checker.pending == ""


def test_stop_string_straddling_min_tokens_still_counts() -> None:
    checker, deltas = run(["ST", "OP"], min_tokens=1, stop="STOP")
    assert (checker.stop_reason, checker.text, deltas) == ("STOP", "", ["", ""])


def test_streamed_deltas_are_never_taken_back() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        stops = [
            "".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))
        ]
        pieces = ["".join(rng.choice("ab ") for _ in range(rng.randint(0, 3))) for _ in range(12)]
        include = rng.random() < 0.3
        checker, deltas = run(pieces, stop=stops, include_stop_str_in_output=include)
        assert "".join(deltas) == checker.text  # finished or not, released text is a prefix
        reference = ""
        for piece in pieces:
            reference += piece
            hits = [(reference.find(stop), stop) for stop in stops if stop in reference]
            if hits:
                index, stop = min(hits, key=lambda hit: hit[0])
                reference = reference[: index + len(stop) if include else index]
                break
        assert checker.text + checker.pending == reference, (pieces, stops)


def test_append_after_finishing_is_a_bug() -> None:
    checker, _ = run(["a"], max_tokens=1)
    with pytest.raises(RuntimeError, match="after the completion finished"):
        checker.append(5, Pieces())


@pytest.fixture(scope="module")
def tokenizer(embedded_model_cache: Path) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
        return AutoTokenizer.from_pretrained(embedded_model_path(convert=False))


def generate(
    tokenizer: Any, text: str, params: SamplingParams, tail: Sequence[int] = ()
) -> tuple[StopChecker, str]:
    """Replay ``text`` (plus ``tail`` ids) through a real detokenizer; return the checker and the stream."""
    prompt = tokenizer.encode("Q: what is it?\nA:", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, params.skip_special_tokens)
    checker = StopChecker(params, max_tokens=200, eos_token_ids=[tokenizer.eos_token_id])
    streamed = ""
    for token in [*tokenizer.encode(text, add_special_tokens=False), *tail]:
        streamed += checker.append(token, detokenizer)
        if checker.finished:
            break
    return checker, streamed


def test_real_tokens_stop_strings(tokenizer: Any) -> None:
    checker, streamed = generate(
        tokenizer, " The answer is 42.\nUser: and now?", SamplingParams(stop=["\nUser:"])
    )
    assert (checker.stop_reason, checker.text, streamed) == (
        "\nUser:",
        " The answer is 42.",
        " The answer is 42.",
    )
    checker, streamed = generate(
        tokenizer, " Go 🚀 now", SamplingParams(stop="🚀")
    )  # a stop spanning byte tokens
    assert (checker.text, streamed) == (" Go ", " Go ")


def test_real_eos_flushes_a_split_character_and_drops_its_own_text(tokenizer: Any) -> None:
    rocket = tokenizer.encode(" 🚀", add_special_tokens=False)
    broken = tokenizer.decode(rocket[:-1])
    params = SamplingParams(skip_special_tokens=False)
    text = tokenizer.decode(tokenizer.encode(" ok", add_special_tokens=False))
    checker, streamed = generate(tokenizer, " ok", params, [*rocket[:-1], tokenizer.eos_token_id])
    assert (checker.finish_reason, checker.text, streamed) == ("stop", text + broken, text + broken)
