"""Picks every sampling request's next token in one vectorised pass over the batch.

Order, as in vLLM: penalties → min_tokens (EOS and stop tokens masked) → greedy rows take the
argmax → temperature → top-k / top-p → min-p → the exponential race (``argmax(p / E)`` with
``E ~ Exp(1)``, a draw from ``p`` that needs no cumulative sum). Operations no row needs are skipped,
so an all-greedy batch costs one argmax.

Top-k / top-p never sort the vocabulary (a 64 x 49k sort takes most of a second on two cores): they
work on the row's best ``width`` candidates from one ``topk``, widened only for a top-p row whose
nucleus does not fit. A seeded row draws one uniform per vocabulary entry from its own generator
each step and indexes it by token id, so its tokens depend on nothing but its own seed and logits:
not on the batch, its position in it, or how many candidates were kept.

Logprobs are vLLM's default "raw" ones: log_softmax of the logits as the model produced them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from kernel_core.runner.logprobs import TokenLogprobs, gather_logprobs
from kernel_core.runner.penalties import apply_penalties, needs_penalties
from kernel_core.sampling_params import SamplingParams

#: Candidates a top-p row without top-k starts from; each widening multiplies it by _WIDEN.
_START_WIDTH = 512
_WIDEN = 8
_TINY = torch.finfo(torch.float32).tiny


@dataclass(slots=True)
class SamplingRow:
    """What the sampler reads of one request this step (one row of the logits)."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    #: The request's own generator (see :func:`make_generator`) when ``params.seed`` is set.
    generator: torch.Generator | None = None


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    #: Per row: ``None`` unless its ``params.logprobs`` is set.
    logprobs: list[TokenLogprobs | None]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The private random stream of a seeded request; create it once, when the request arrives.

    Any int seeds it: torch takes 64 bits, so the seed is reduced modulo 2**64 (torch maps a
    negative seed the same way), and ``seed + index`` of the n-th sample never overflows."""
    return torch.Generator(device=device).manual_seed(seed % 2**64)


class Sampler:
    """Stateless apart from the model's EOS ids (masked while a row is short of ``min_tokens``)."""

    def __init__(self, eos_token_ids: Collection[int] = ()) -> None:
        self.eos_token_ids = tuple(eos_token_ids)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """Next token of each row of ``logits`` ``[N, V]``; ``logits`` may be modified in place."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} rows of logits for {len(rows)} sampling rows")
        logits = logits.float().contiguous()
        want_logprobs = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        raw_logprobs = _take(logits, want_logprobs).log_softmax(-1) if want_logprobs else None

        penalised = [i for i, row in enumerate(rows) if needs_penalties(row.params)]
        if penalised:
            apply_penalties(
                logits,
                penalised,
                [rows[i].params for i in penalised],
                [rows[i].prompt_token_ids for i in penalised],
                [rows[i].output_token_ids for i in penalised],
            )
        self._mask_stop_tokens(logits, rows)

        greedy: list[int] = []
        plain: list[int] = []
        filtered: list[int] = []
        vocab = logits.shape[1]
        for i, row in enumerate(rows):
            params = row.params
            if params.is_greedy:
                greedy.append(i)
            elif params.top_p < 1.0 or 0 < params.top_k < vocab:
                filtered.append(i)
            else:
                plain.append(i)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            tokens[greedy] = _take(logits, greedy).argmax(-1)
        if filtered:
            tokens[filtered] = _sample_candidates(
                _take(logits, filtered), [rows[i] for i in filtered], _START_WIDTH
            )
        if plain:  # last: when it is every row, it scales ``logits`` in place
            tokens[plain] = _sample_full(_take(logits, plain), [rows[i] for i in plain])

        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        if raw_logprobs is not None:
            gathered = gather_logprobs(
                raw_logprobs, tokens[want_logprobs], [rows[i].params.logprobs or 0 for i in want_logprobs]
            )
            for i, entry in zip(want_logprobs, gathered):
                logprobs[i] = entry
        return SamplerOutput(tokens.tolist(), logprobs)

    def _mask_stop_tokens(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
        """Forbid EOS (unless ignored) and the stop token ids of rows still short of min_tokens."""
        row_index: list[int] = []
        token_index: list[int] = []
        for i, row in enumerate(rows):
            params = row.params
            if len(row.output_token_ids) < params.min_tokens:
                stops = (
                    params.stop_token_ids if params.ignore_eos else params.stop_token_ids + self.eos_token_ids
                )
                row_index += [i] * len(stops)
                token_index += stops
        if row_index:
            logits[row_index, token_index] = -math.inf


def _take(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``tensor[rows]`` without a copy when ``rows`` is every row in order."""
    return tensor if len(rows) == tensor.shape[0] else tensor[rows]


def _sample_full(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Rows without top-k/top-p: temperature, min-p and the race over the whole vocabulary.

    ``logits`` are shifted and scaled in place.
    """
    scaled = _scale(logits.sub_(logits.amax(-1, keepdim=True)), rows)
    _mask_min_p(scaled, rows)
    return _exponential_race(scaled.exp_(), rows, None, logits.shape[1])


def _sample_candidates(logits: torch.Tensor, rows: Sequence[SamplingRow], min_width: int) -> torch.Tensor:
    """Rows with top-k and/or top-p, on their best candidates (one ``topk``, sorted, not a sort).

    ``logits`` are unscaled: the candidates are the same at any temperature, so only they are scaled.
    """
    vocab = logits.shape[1]
    device = logits.device
    top_k = [row.params.top_k if 0 < row.params.top_k < vocab else 0 for row in rows]
    # A row with top-k takes exactly its k candidates, so renormalising over them is exact (vLLM's
    # top-p after top-k); a top-p-only row starts at min_width and is widened if its nucleus spills.
    width = min(vocab, max(k or min_width for k in top_k))
    values, token_ids = logits.topk(width, dim=-1)
    best = values[:, :1].clone()  # sub_ must not read the column it is overwriting
    scaled = _scale(values.sub_(best), rows)  # each row's best candidate is now 0
    k = torch.tensor(top_k, device=device)
    has_top_k = k > 0
    scaled.masked_fill_(
        has_top_k.unsqueeze(1) & (torch.arange(width, device=device) >= k.unsqueeze(1)), -math.inf
    )

    uncovered = torch.zeros(len(rows), dtype=torch.bool, device=device)
    top_p = torch.tensor([row.params.top_p for row in rows], device=device)
    has_top_p = top_p < 1.0
    if bool(has_top_p.any()):
        # Log-normaliser of the scaled row: over its kept candidates under top-k, else over the vocabulary.
        log_norm = scaled.logsumexp(-1)
        whole = (~has_top_k).nonzero().view(-1).tolist()
        if whole:
            shifted = logits[whole].sub_(best[whole])
            log_norm[whole] = _scale(shifted, [rows[i] for i in whole]).exp_().sum(-1).log_()
        probs = (scaled - log_norm.unsqueeze(1)).exp_()
        # Keep a token while the mass strictly before it is below top_p (the first is always kept).
        outside = (probs.cumsum(-1).sub_(probs) >= top_p.unsqueeze(1)) & has_top_p.unsqueeze(1)
        scaled.masked_fill_(outside, -math.inf)
        uncovered = ~has_top_k & ~outside[:, -1] & (width < vocab)

    tokens = torch.empty(len(rows), dtype=torch.long, device=device)
    if bool(uncovered.any()):
        wide = uncovered.nonzero().view(-1).tolist()
        tokens[wide] = _sample_candidates(logits[wide], [rows[i] for i in wide], width * _WIDEN)
    fit = (~uncovered).nonzero().view(-1).tolist()
    if fit:
        scaled, token_ids = _take(scaled, fit), _take(token_ids, fit)
        fit_rows = [rows[i] for i in fit]
        _mask_min_p(scaled, fit_rows)
        choice = _exponential_race(scaled.exp_(), fit_rows, token_ids, vocab)
        tokens[fit] = token_ids.gather(1, choice.unsqueeze(1)).view(-1)
    return tokens


def _scale(shifted: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Divide each row by its temperature, in place.

    A temperature beyond the logits' dtype (over 3.4e38 in float32) would become inf there and
    turn masked -inf logits into NaN, which the race then picks: it is capped at the dtype's
    largest value, which flattens the row just the same.
    """
    temperature = torch.tensor([row.params.temperature for row in rows], dtype=shifted.dtype, device=shifted.device)
    return shifted.div_(temperature.clamp_(max=torch.finfo(shifted.dtype).max).unsqueeze(1))


def _mask_min_p(scaled: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place: drop tokens whose probability is below ``min_p`` times the best one's.

    ``scaled`` is shifted so each row's best logit is 0: the test is ``logit < log(min_p)``.
    """
    min_p = [row.params.min_p for row in rows]
    if any(min_p):
        log_min_p = torch.tensor(min_p, device=scaled.device).log_().unsqueeze(1)
        scaled.masked_fill_(scaled < log_min_p, -math.inf)


def _exponential_race(
    weights: torch.Tensor, rows: Sequence[SamplingRow], token_ids: torch.Tensor | None, vocab: int
) -> torch.Tensor:
    """Column of ``argmax(weights / E)``, ``E`` i.i.d. Exp(1): a draw proportional to ``weights``.

    ``token_ids`` maps columns to token ids when ``weights`` holds candidates, not the vocabulary.
    With ``E = -log U`` this is ``argmin(weights / log U)``, one pass fewer; ``U`` starts at the
    smallest positive float so ``log U`` is finite and negative.
    """
    noise = torch.empty_like(weights)
    seeded = [i for i, row in enumerate(rows) if row.generator is not None]
    if len(seeded) < len(rows):
        noise.uniform_(_TINY, 1.0)  # seeded rows are overwritten below
    for i in seeded:
        uniform = torch.empty(vocab, device=weights.device).uniform_(_TINY, 1.0, generator=rows[i].generator)
        noise[i] = uniform if token_ids is None else uniform[token_ids[i]]
    return weights.div_(noise.log_()).argmin(-1)
