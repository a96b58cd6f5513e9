"""EngineConfig under arbitrary input (hypothesis): construction either fails with a
ValidationError naming the field, or gives a configuration an engine on the tiny model is either
built from and runs a request with, or refuses with an error naming the culprit: never a
TypeError, OverflowError or allocator failure from deep inside."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kernel_core.config import DTYPES, EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError, KernelCoreError
from kernel_core.sampling_params import SamplingParams

from .properties import ANYTHING, FAST, LONG, arbitrary_kwargs, check_construction

ENGINE_FAST = settings(FAST, max_examples=25)
PLUGIN_FIELDS = (
    "scheduler_policy", "cache_manager", "model_architecture", "attention_backend", "platform", "lora_kernel", "moe_kernel",
    "distributed_executor",
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_within_documented_ranges(config: EngineConfig) -> None:
    """What the engine's start-up relies on without checking again."""
    assert config.dtype in DTYPES
    for name in ("max_num_batched_tokens", "max_num_seqs", "block_size", "max_loras", "max_lora_rank"):
        value = getattr(config, name)
        assert type(value) is int and value >= 1, name
    for name in ("max_model_len", "num_kv_blocks", "max_cpu_loras"):
        value = getattr(config, name)
        assert value is None or (type(value) is int and value >= 1), name
    assert config.block_size <= config.max_num_batched_tokens
    assert config.max_cpu_loras is None or config.max_cpu_loras >= config.max_loras
    for name in ("kv_cache_memory", "request_timeout"):
        value = getattr(config, name)
        assert value is None or (type(value) is float and math.isfinite(value) and value > 0), name
    assert math.isfinite(config.kv_cache_memory_fraction) and 0 < config.kv_cache_memory_fraction <= 0.95
    assert type(config.seed) is int and -(2**63) <= config.seed < 2**64  # what torch.manual_seed takes
    for name in PLUGIN_FIELDS:
        value = getattr(config, name)
        assert value is None or type(value) is str, name
    assert type(config.enable_lora) is bool and type(config.enable_prefix_caching) is bool
    assert config.moe_quantization in (None, "int8")


#: model is required: always given, so that the other fields' checks are what is tested.
ARBITRARY = arbitrary_kwargs([f for f in EngineConfig.model_fields if f != "model"], model="m")


@FAST
@given(ARBITRARY)
def test_arbitrary_values_are_accepted_within_range_or_refused_naming_the_field(kwargs: dict[str, Any]) -> None:
    check_construction(EngineConfig, kwargs, assert_within_documented_ranges)


@pytest.mark.slow
@LONG
@given(ARBITRARY)
def test_arbitrary_values_long_run(kwargs: dict[str, Any]) -> None:
    check_construction(EngineConfig, kwargs, assert_within_documented_ranges)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**64), ("seed", -(2**63) - 1), ("kv_cache_memory", math.inf), ("request_timeout", math.inf)],
)
def test_examples_hypothesis_found_stay_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        EngineConfig(model="m", **{field: value})
    assert caught.value.errors()[0]["loc"][0] == field


# -- accepted configurations through an engine -------------------------------------------------

#: Far beyond any machine's memory, in blocks, tokens or adapter slots.
ABSURD = st.one_of(st.integers(min_value=2**40, max_value=2**70), st.sampled_from([2**63, 10**400]))


#: Accepted values the engine must refuse by name (or, for the last ones, simply run with).
EXTREMES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "context beyond the model's": st.builds(dict, max_model_len=st.integers(1025, 2**70)),
    "context shorter than the prompt": st.builds(dict, max_model_len=st.integers(1, 5)),
    "absurd num_kv_blocks": st.builds(dict, num_kv_blocks=ABSURD, kv_cache_memory=st.none()),
    "absurd kv_cache_memory": st.builds(dict, kv_cache_memory=st.floats(1e4, 1e300), num_kv_blocks=st.none()),
    "kv_cache_memory below one block": st.builds(dict, kv_cache_memory=st.floats(1e-12, 1e-9), num_kv_blocks=st.none()),
    "absurd block_size": ABSURD.map(lambda n: dict(block_size=n, max_num_batched_tokens=n)),
    "absurd LoRA slots": st.builds(dict, enable_lora=st.just(True), max_loras=ABSURD),
    "absurd LoRA rank": st.builds(dict, enable_lora=st.just(True), max_lora_rank=ABSURD),
    "unknown plugin": st.builds(
        lambda name, value: {name: value}, st.sampled_from(PLUGIN_FIELDS), st.text(min_size=1, max_size=8)
    ),
    "timeout already past": st.builds(dict, request_timeout=st.floats(1e-300, 1e-6)),
    "absurd batch limits": st.builds(dict, max_num_seqs=ABSURD, max_num_batched_tokens=ABSURD),
}


@st.composite
def valid_extremes(draw: st.DrawFn) -> dict[str, Any]:
    """A small working configuration, often with one accepted extreme: absurd sizes, a plugin
    name nothing provides, a context too short for the prompt, a timeout already past."""
    block_size = draw(st.integers(1, 32))
    kwargs: dict[str, Any] = dict(
        dtype=draw(st.sampled_from(DTYPES)),
        max_model_len=draw(st.one_of(st.none(), st.integers(16, 1024))),
        max_num_seqs=draw(st.integers(1, 8)),
        enable_prefix_caching=draw(st.booleans()),
        seed=draw(st.one_of(st.sampled_from([-(2**63), -1, 2**64 - 1]), st.integers(-(2**63), 2**64 - 1))),
        block_size=block_size,
        max_num_batched_tokens=draw(st.integers(block_size, block_size + 64)),
        request_timeout=draw(st.one_of(st.none(), st.floats(1e3, 1e300))),
    )
    if draw(st.booleans()):
        kwargs["num_kv_blocks"] = draw(st.integers(1, 2048 // block_size + 1))
    else:
        kwargs["kv_cache_memory"] = draw(st.floats(1e-5, 0.005))  # GiB
    if draw(st.booleans()):
        kwargs |= dict(enable_lora=True, max_loras=draw(st.integers(1, 4)), max_lora_rank=draw(st.integers(1, 64)))
    extreme = draw(st.sampled_from([None, *EXTREMES]))
    if extreme is not None:
        kwargs |= draw(EXTREMES[extreme])
    # One field that sizes no memory given any value instead, kept when accepted (a numeric
    # string, a bool...): what validation lets through must build and run as well. (An arbitrary
    # size within the machine's memory would really be allocated on this shared box.)
    field, value = draw(st.sampled_from(UNSIZED)), draw(ANYTHING)
    try:
        EngineConfig(model="m", **{**kwargs, field: value})
        kwargs[field] = value
    except ValidationError:
        pass
    return kwargs


UNSIZED = [f for f in EngineConfig.model_fields if f not in (
    "model", "num_kv_blocks", "kv_cache_memory", "kv_cache_memory_fraction", "block_size", "max_loras", "max_lora_rank"
)]


def assert_names_its_culprit(exc: BaseException, config: EngineConfig) -> None:
    """The message names a field, or quotes a plugin name as validation left it."""
    message = str(exc)
    values = config.model_dump()
    culprits = [
        name for name, value in values.items()
        if name in message or (name in PLUGIN_FIELDS and isinstance(value, str) and repr(value) in message)
    ]
    assert culprits, f"{type(exc).__name__} names no field: {message}"


def check_engine(tiny_model: Path, kwargs: dict[str, Any]) -> None:
    try:
        config = EngineConfig(model=str(tiny_model), **kwargs)
    except ValidationError as exc:  # e.g. max_cpu_loras with an absurd max_loras
        assert all(error["loc"][0] in kwargs for error in exc.errors() if error["loc"])
        return
    try:
        engine = LLMEngine(config)
    except KernelCoreError as exc:
        assert_names_its_culprit(exc, config)
        event(f"engine refused: {type(exc).__name__}")
        return
    try:
        engine.add_request("r", "Hello, my name is", SamplingParams(temperature=0, max_tokens=4))
    except InvalidRequestError as exc:  # a prompt the context or the KV cache cannot hold
        assert "max_model_len" in str(exc) or "KV cache" in str(exc), exc
        event("request refused")
        return
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    (completion,) = outputs[0].outputs
    event(f"ran: {completion.finish_reason}")
    if completion.finish_reason == "abort":
        assert config.request_timeout is not None and "timed out" in completion.error
    else:
        assert completion.error is None and completion.finish_reason in ("stop", "length"), completion
        assert 1 <= len(completion.token_ids) <= 4
    stats = engine.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks


@ENGINE_FAST
@given(valid_extremes())
def test_accepted_configurations_build_an_engine_or_are_refused_by_name(tiny_model: Path, kwargs: dict[str, Any]) -> None:
    check_engine(tiny_model, kwargs)


@pytest.mark.slow
@settings(ENGINE_FAST, max_examples=300)
@given(valid_extremes())
def test_accepted_configurations_long_run(tiny_model: Path, kwargs: dict[str, Any]) -> None:
    check_engine(tiny_model, kwargs)
