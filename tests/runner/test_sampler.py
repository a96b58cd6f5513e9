"""The sampler: greedy and filters pick what their definitions say, penalties change exactly the
right logits, seeds reproduce whatever the batch, draws follow the distribution, logprobs are raw."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import torch

from kernel_core.runner.logprobs import TokenLogprobs, prompt_logprobs
from kernel_core.runner.penalties import apply_penalties
from kernel_core.runner.sampler import Sampler, SamplingRow, make_generator
from kernel_core.sampling_params import SamplingParams

EOS = 0

# Upper 0.1% points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def row(
    output: Sequence[int] = (), prompt: Sequence[int] = (), seed: int | None = None, **params: object
) -> SamplingRow:
    generator = make_generator(seed) if seed is not None else None
    return SamplingRow(SamplingParams(**params), list(prompt), list(output), generator)


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
    return Sampler(eos_token_ids=[EOS])(logits.clone(), rows).token_ids


def draws(logits: torch.Tensor, count: int, **params: object) -> torch.Tensor:
    """Histogram of ``count`` draws from one row of logits (the global generator, fixed seed)."""
    torch.manual_seed(1234)
    tokens = sample(logits.expand(count, -1), [row(**params)] * count)
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[0]).double()


def chi_square(observed: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    kept = probs > 0
    expected = probs[kept].double() * observed.sum()
    return float(((observed[kept] - expected) ** 2 / expected).sum()), int(kept.sum()) - 1


# --- greedy and filters ------------------------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(0))
    assert sample(logits, [row(temperature=0.0)] * 16) == logits.argmax(-1).tolist()


def test_greedy_breaks_exact_ties_to_the_lowest_token_id_as_transformers_does() -> None:
    """bfloat16 logits tie often; HF's greedy ``argmax`` of them (cast to float32) takes the first."""
    logits = torch.full((2, 300), -1.0).bfloat16()
    logits[0, [17, 5, 260]] = 3.125
    logits[1, [299, 42]] = 0.5
    assert sample(logits, [row(temperature=0.0)] * 2) == [5, 42]


@pytest.mark.parametrize(
    "params", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}, {"top_k": 1, "top_p": 0.5}]
)
def test_filters_at_their_narrowest_are_greedy(params: dict[str, float]) -> None:
    logits = torch.randn(32, 500, generator=torch.Generator().manual_seed(1))
    assert sample(logits, [row(temperature=1.5, **params)] * 32) == logits.argmax(-1).tolist()


def test_top_k_keeps_exactly_the_k_best() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2))
    seen = draws(logits, 20_000, temperature=5.0, top_k=5).nonzero().view(-1)
    assert set(seen.tolist()) == set(logits.topk(5).indices.tolist())


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.45, {0}), (0.79, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_tokens_until_the_mass_before_them_reaches_p(top_p: float, kept: set[int]) -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert set(draws(logits, 20_000, top_p=top_p).nonzero().view(-1).tolist()) == kept


def test_top_p_with_a_wide_nucleus_widens_past_the_first_candidates() -> None:
    vocab, top_p = 5000, 0.9
    logits = -torch.linspace(0.0, 1.0, vocab)  # nearly flat: the nucleus holds ~4,400 tokens
    probs = logits.softmax(-1)
    nucleus = int(((probs.cumsum(0) - probs) < top_p).sum())
    seen = draws(logits, 400, top_p=top_p).nonzero().view(-1)
    assert int(seen.max()) < nucleus
    assert int(seen.max()) > 512  # beyond the first topk: the widening really ran


def test_top_p_after_top_k_renormalises_over_the_k_kept() -> None:
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # The first two hold 0.7 of the whole, but 7/9 of the top 3: p = 0.75 then needs no third.
    assert set(draws(logits, 20_000, top_p=0.75).nonzero().view(-1).tolist()) == {0, 1, 2}
    assert set(draws(logits, 20_000, top_k=3, top_p=0.75).nonzero().view(-1).tolist()) == {0, 1}


def test_min_p_drops_tokens_below_min_p_times_the_best() -> None:
    logits = torch.tensor([0.4, 0.25, 0.19, 0.16]).log()
    assert set(draws(logits, 20_000, min_p=0.45).nonzero().view(-1).tolist()) == {0, 1, 2}
    assert set(draws(logits, 20_000, min_p=0.5).nonzero().view(-1).tolist()) == {0, 1}


# --- distribution of unseeded draws ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "mask"),
    [
        ({"temperature": 0.7}, None),
        ({"temperature": 1.3, "top_k": 4}, "top_k"),
        ({"temperature": 1.0, "top_p": 0.8}, "top_p"),
        ({"temperature": 1.0, "min_p": 0.2}, "min_p"),
    ],
)
def test_draws_follow_the_filtered_softmax(params: dict[str, float], mask: str | None) -> None:
    logits = torch.tensor([2.0, 1.5, 1.2, 0.9, 0.4, 0.1, -0.5, -1.0])
    probs = (logits / params["temperature"]).softmax(-1)
    if mask == "top_k":
        probs[4:] = 0
    elif mask == "top_p":
        probs[(probs.cumsum(0) - probs) >= params["top_p"]] = 0
    elif mask == "min_p":
        probs[probs < params["min_p"] * probs.max()] = 0
    probs = probs / probs.sum()
    statistic, freedom = chi_square(draws(logits, 40_000, **params), probs)
    assert statistic < CHI2_999[freedom]


# --- seeds ------------------------------------------------------------------------------------

SEEDED_KINDS = [
    {"temperature": 0.9},
    {"temperature": 1.0, "top_k": 20},
    {"temperature": 1.0, "top_p": 0.8},
    {"temperature": 1.5, "min_p": 0.05},
    {"temperature": 2.0, "top_p": 0.99},  # a nucleus wider than the first candidates
]


def seeded_tokens(
    seed: int, params: dict[str, float], position: int, others: Sequence[dict[str, object]]
) -> list[int]:
    """Ten steps of one seeded row placed at ``position`` among ``others``."""
    step_logits = torch.randn(10, 1000, generator=torch.Generator().manual_seed(7)) * 2
    target = row(seed=seed, **params)
    neighbours = [row(**other) for other in others]
    tokens = []
    for logits in step_logits:
        rows = neighbours[:position] + [target] + neighbours[position:]
        batch = torch.randn(len(rows), 1000) * 2
        batch[position] = logits
        tokens.append(sample(batch, rows)[position])
    return tokens


@pytest.mark.parametrize("params", SEEDED_KINDS)
def test_same_seed_same_tokens_whatever_the_batch(params: dict[str, float]) -> None:
    alone = seeded_tokens(42, params, 0, [])
    crowd = [
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 900},  # widens every candidate set of the batch
        {"temperature": 1.0, "seed": 3},
        {"temperature": 0.8, "top_p": 0.5},
        {"temperature": 1.0, "repetition_penalty": 1.3},
    ]
    assert seeded_tokens(42, params, 3, crowd) == alone
    assert seeded_tokens(42, params, 1, crowd[::-1]) == alone
    assert seeded_tokens(43, params, 0, []) != alone


# --- penalties ---------------------------------------------------------------------------------


def test_penalties_change_exactly_the_right_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0], [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    apply_penalties(logits, [1], [params], [[0, 1]], [[3, 3, 4]])
    # Repetition on prompt+output tokens {0, 1, 3, 4}: 2 -> 1, -1 -> -2, 3 -> 1.5, -2 -> -4;
    # then token 3 (twice in the output) loses 2 * 0.5 + 0.25, token 4 (once) 0.5 + 0.25.
    assert logits[1].tolist() == [1.0, -2.0, 0.5, 0.25, -4.75, 1.0]
    assert logits[0].tolist() == [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]  # rows not listed are untouched


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"repetition_penalty": 0.5}, [4.0, -0.5, 0.5, 6.0, -1.0, 1.0]),
        ({"frequency_penalty": -1.0}, [2.0, -1.0, 0.5, 5.0, -1.0, 1.0]),
        ({"presence_penalty": 1.0}, [2.0, -1.0, 0.5, 2.0, -3.0, 1.0]),
    ],
)
def test_each_penalty_alone(params: dict[str, float], expected: list[float]) -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    apply_penalties(logits, [0], [SamplingParams(**params)], [[0, 1]], [[3, 3, 4]])
    assert logits[0].tolist() == expected


def test_greedy_rows_see_penalised_logits() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]] * 2)
    rows = [row(output=[1], temperature=0.0), row(output=[1], temperature=0.0, frequency_penalty=2.0)]
    assert sample(logits, rows) == [1, 2]


# --- min_tokens ---------------------------------------------------------------------------------


def test_min_tokens_masks_eos_and_stop_tokens_until_reached() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0]] * 4)  # EOS (0) best, then stop token 1
    rows = [
        row(output=[3], temperature=0.0, min_tokens=2, stop_token_ids=[1]),
        row(output=[3, 3], temperature=0.0, min_tokens=2, stop_token_ids=[1]),
        row(output=[3], temperature=0.0, min_tokens=2, stop_token_ids=[1], ignore_eos=True),
        row(output=[3], temperature=0.0, stop_token_ids=[1]),
    ]
    # Short of min_tokens: EOS and the stop token are forbidden; reached: EOS is fine again;
    # ignore_eos means EOS does not stop, so it is not masked either; no min_tokens: nothing masked.
    assert sample(logits, rows) == [2, 0, 0, 0]


# --- logprobs -----------------------------------------------------------------------------------


def test_logprobs_are_raw_with_true_ranks() -> None:
    logits = torch.tensor([[3.0, 2.5, 1.0, 0.5, -1.0, 2.0]])
    raw = logits.log_softmax(-1)[0]
    # EOS (0) is masked by min_tokens and token 1 penalised, so greedy picks token 5 (third raw best).
    rows = [row(output=[1], temperature=0.0, min_tokens=5, presence_penalty=2.0, logprobs=2)]
    out = Sampler(eos_token_ids=[EOS])(logits.clone(), rows)
    assert out.token_ids == [5]
    entry = out.logprobs[0]
    assert entry is not None
    assert entry.token_ids == [5, 0, 1] and entry.ranks == [3, 1, 2]
    assert entry.logprobs == pytest.approx([raw[5].item(), raw[0].item(), raw[1].item()])


def test_logprobs_only_for_rows_that_ask() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(3))
    out = Sampler()(logits, [row(temperature=0.0), row(logprobs=0), row(temperature=0.0, logprobs=4)])
    assert out.logprobs[0] is None
    assert out.logprobs[1] is not None and out.logprobs[1].token_ids == [out.token_ids[1]]
    assert out.logprobs[2] is not None and out.logprobs[2].ranks == [1, 1, 2, 3, 4]


def test_to_dict_puts_the_chosen_token_first_once() -> None:
    entry = TokenLogprobs([7, 3, 7], [-1.5, -0.5, -1.5], [2, 1, 2])
    result = entry.to_dict(lambda token: f"<{token}>")
    assert list(result) == [7, 3]
    assert (result[7].logprob, result[7].rank, result[7].decoded_token) == (-1.5, 2, "<7>")


def test_prompt_logprobs_in_chunks_match_a_direct_computation() -> None:
    logits = torch.randn(300, 50, generator=torch.Generator().manual_seed(4))
    next_ids = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(5))
    result = prompt_logprobs(logits, next_ids.tolist(), 3)
    raw = logits.log_softmax(-1)
    assert len(result) == 300
    for i in (0, 255, 256, 299):
        chosen = raw[i, next_ids[i]].item()
        assert result[i].token_ids[0] == next_ids[i].item()
        assert result[i].ranks[0] == int((raw[i] > chosen).sum()) + 1
        assert result[i].token_ids[1:] == raw[i].topk(3).indices.tolist()
        assert result[i].logprobs[0] == pytest.approx(chosen)


def test_prompt_logprobs_need_one_token_per_row() -> None:
    with pytest.raises(ValueError, match="3 rows of logits for 2 prompt tokens"):
        prompt_logprobs(torch.zeros(3, 5), [1, 2], 1)


# --- shape and scale ------------------------------------------------------------------------------


def test_rows_must_match_logits() -> None:
    with pytest.raises(ValueError, match="2 rows of logits for 1 sampling rows"):
        Sampler()(torch.zeros(2, 5), [row()])


def test_half_precision_logits_are_sampled_in_float32() -> None:
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(6))
    assert (
        Sampler()(logits.bfloat16(), [row(temperature=0.0)] * 4).token_ids
        == logits.bfloat16().float().argmax(-1).tolist()
    )


def test_large_mixed_batch_runs() -> None:
    """N=64 over SmolLM2's vocabulary, every kind of row; the time is printed, not asserted."""
    vocab = 49152
    kinds = [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.0, "top_k": 40},
        {"temperature": 1.0, "min_p": 0.05, "seed": 1},
        {"temperature": 0.0, "repetition_penalty": 1.2, "logprobs": 5},
        {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "frequency_penalty": 0.5, "seed": 2},
        {"temperature": 1.0, "presence_penalty": 0.5},
    ]
    rows = [row(output=list(range(100)), prompt=list(range(500)), **kinds[i % len(kinds)]) for i in range(64)]
    logits = torch.randn(64, vocab, generator=torch.Generator().manual_seed(8)) * 2
    logits[:, :20] += torch.linspace(12, 4, 20)  # peaked like a language model's
    start = time.perf_counter()
    out = Sampler(eos_token_ids=[EOS])(logits, rows)
    elapsed = time.perf_counter() - start
    print(f"\nsampler, 64 mixed rows x {vocab}: {elapsed * 1e3:.1f} ms")
    assert len(out.token_ids) == 64 and all(0 <= t < vocab for t in out.token_ids)
