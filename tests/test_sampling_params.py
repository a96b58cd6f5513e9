"""SamplingParams: vLLM's defaults, normalised spellings, and errors that name the field."""

import math

import pytest
from pydantic import ValidationError

from kernel_core.sampling_params import SamplingParams


def test_defaults_follow_vllm() -> None:
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (params.max_tokens, params.min_tokens, params.seed, params.stop, params.stop_token_ids) == (
        16,
        0,
        None,
        (),
        (),
    )
    assert params.skip_special_tokens and not params.include_stop_str_in_output and not params.ignore_eos
    assert params.logprobs is None and params.prompt_logprobs is None


def test_spellings_are_normalised() -> None:
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop=None).stop == ()
    assert SamplingParams(stop_token_ids=[7, 9]).stop_token_ids == (7, 9)


def test_extremes_are_valid() -> None:
    SamplingParams(
        temperature=0.0,
        top_p=1e-9,
        top_k=1,
        min_p=1.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        repetition_penalty=1e-3,
        max_tokens=1,
        min_tokens=1,
        logprobs=20,
        prompt_logprobs=0,
        seed=2**64 - 1,
    )
    SamplingParams(max_tokens=None, min_tokens=10_000, seed=-(2**63))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("seed", 2**64),
        ("stop", ["ok", ""]),
        ("stop", 5),
        ("stop_token_ids", [3, -1]),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("logprobs", 21),
        ("logprobs", -1),
        ("prompt_logprobs", 21),
        ("max_tokens", 1.5),
    ],
)
def test_invalid_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        SamplingParams(**{field: value})
    assert isinstance(caught.value, ValidationError)
    assert caught.value.errors()[0]["loc"][0] == field


def test_min_tokens_above_max_tokens_names_min_tokens() -> None:
    with pytest.raises(ValidationError, match=r"min_tokens \(5\) must not exceed max_tokens \(3\)") as caught:
        SamplingParams(max_tokens=3, min_tokens=5)
    assert caught.value.errors()[0]["loc"] == ("min_tokens",)


def test_unknown_field_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="temprature"):
        SamplingParams(temprature=0.5)


def test_frozen() -> None:
    params = SamplingParams()
    with pytest.raises(ValidationError, match="frozen"):
        params.temperature = 0.0


@pytest.mark.parametrize(("temperature", "greedy"), [(0.0, True), (1e-6, True), (1e-5, False), (0.7, False)])
def test_is_greedy_below_vllm_epsilon(temperature: float, greedy: bool) -> None:
    assert SamplingParams(temperature=temperature).is_greedy is greedy
