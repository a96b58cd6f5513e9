"""The CPU's GEMM policy: the product ``F.linear`` computes, on weights packed for oneDNN where it
computes the dtype natively, and ``F.linear`` itself for everything else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_core_platform_cpu.gemm import (
    ONEDNN_LINEAR,
    UNPACKED_ONEDNN_MACS,
    CPULinearPolicy,
    pack_dtypes,
    padded_rows,
)
from kernel_core_platform_cpu.platform import CPUPlatform

PACKED = pack_dtypes()
needs_onednn = pytest.mark.skipif(not ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")


def within_rounding(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``out`` is the product up to what float32 sums may round in any order (Higham's
    bound: ``in_features * eps * |x| @ |weight|.T``, plus ``|bias|``'s term) and one rounding to
    ``out``'s dtype: what every correct GEMM meets, MKL's and oneDNN's alike, whatever their order."""
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    magnitude = F.linear(x.double().abs(), weight.double().abs(), None if bias is None else bias.double().abs())
    accumulate = torch.finfo(torch.float32).eps * (x.shape[-1] + 1) * magnitude
    bound = accumulate + torch.finfo(out.dtype).eps * exact.abs()
    return bool(((out.double() - exact).abs() <= bound).all())


def test_the_cpu_platform_names_its_policy() -> None:
    assert isinstance(CPUPlatform().linear_policy(), CPULinearPolicy)


@needs_onednn
def test_packs_float32_always_and_bfloat16_where_native() -> None:
    assert PACKED[0] is torch.float32
    assert (torch.bfloat16 in PACKED) is torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("dtype", PACKED)
@pytest.mark.parametrize("rows", [0, 1, 7, 64, 300])
@pytest.mark.parametrize(("in_features", "out_features"), [(96, 80), (576, 960), (1536, 576)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_product_is_as_accurate_as_f_linear(
    dtype: torch.dtype, rows: int, in_features: int, out_features: int, with_bias: bool
) -> None:
    """Against float64: oneDNN sums in another order than MKL, so the two differ in the last bits;
    both stay within the rounding any summation order may make (``F.linear`` checked too)."""
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype) if with_bias else None
    policy = CPULinearPolicy()
    packed = policy.prepare(weight)
    assert packed.is_mkldnn and packed.shape == weight.shape and packed.dtype == dtype
    out = policy.linear(x, packed, bias)
    reference = F.linear(x, weight, bias)
    assert out.shape == reference.shape and out.dtype == dtype and out.is_contiguous()
    assert within_rounding(reference, x, weight, bias) and within_rounding(out, x, weight, bias)


@pytest.mark.parametrize("dtype", PACKED)
def test_batched_and_strided_inputs(dtype: torch.dtype) -> None:
    policy = CPULinearPolicy()
    weight = torch.randn(40, 32).to(dtype)
    packed = policy.prepare(weight)
    for x in (torch.randn(2, 3, 32).to(dtype), torch.randn(9, 64).to(dtype)[:, ::2]):
        out = policy.linear(x, packed)
        assert out.shape == (*x.shape[:-1], 40) and within_rounding(out, x, weight, None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, *(d for d in (torch.bfloat16,) if d not in PACKED)])
def test_other_dtypes_stay_plain_and_take_f_linear(dtype: torch.dtype) -> None:
    policy = CPULinearPolicy()
    x, weight, bias = torch.randn(7, 16).to(dtype), torch.randn(4, 16).to(dtype), torch.randn(4).to(dtype)
    assert policy.prepare(weight) is weight
    assert torch.equal(policy.linear(x, weight, bias), F.linear(x, weight, bias))


def test_small_unprepared_weights_take_f_linear() -> None:
    """Small products of weights a model keeps itself (not handed to ``prepare``) run as they are."""
    x, weight = torch.randn(7, 16), torch.randn(4, 16)
    assert torch.equal(CPULinearPolicy().linear(x, weight), F.linear(x, weight))


@needs_onednn
@pytest.mark.parametrize("rows", [1, 64, 300])
def test_large_unprepared_float32_weights_take_onednn_as_accurately(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tied ``lm_head`` stays plain (it is also the embedding table); its float32 product goes to
    oneDNN's linear on the plain layout, within the rounding any summation order may make."""
    generator = torch.Generator().manual_seed(rows)
    out_features = -(-UNPACKED_ONEDNN_MACS // (rows * 64))
    x, weight = torch.randn(rows, 64, generator=generator), torch.randn(out_features, 64, generator=generator)
    policy, called = CPULinearPolicy(), []
    monkeypatch.setattr("kernel_core_platform_cpu.gemm._MKLDNN", _Spy(torch.ops.mkldnn._linear_pointwise, called))
    out = policy.linear(x, weight)
    assert called and out.shape == (rows, out_features) and out.is_contiguous()
    assert within_rounding(out, x, weight, None)


class _Spy:
    """Stands in for ``torch.ops.mkldnn``, recording the calls of its linear."""

    def __init__(self, linear: object, calls: list[int]) -> None:
        self._linear, self._calls = linear, calls

    def _linear_pointwise(self, *args: object) -> torch.Tensor:
        self._calls.append(1)
        return self._linear(*args)  # type: ignore[operator]


def test_packs_nothing_without_packed_dtypes() -> None:
    weight = torch.randn(4, 16)
    assert CPULinearPolicy(dtypes=()).prepare(weight) is weight


def test_row_counts_meet_a_bounded_set_of_shapes_at_most_a_quarter_larger() -> None:
    """oneDNN caches a primitive per shape: a server must not meet a new one for every row count."""
    padded = [padded_rows(rows) for rows in range(1, 8193)]
    assert all(p >= rows for rows, p in enumerate(padded, 1))
    assert all(p == rows for rows, p in enumerate(padded[:8], 1))  # decode of a few requests: exact
    assert all(p <= rows * 5 / 4 for rows, p in enumerate(padded[8:], 9))
    assert len(set(padded)) <= 50
