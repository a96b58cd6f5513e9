"""RandLoRA's shared random bases, drawn as PEFT draws them so that one ``projection_prng_key``
gives the same bases on every machine (a file saved without them gets them back):

- ``A`` of shape ``(r, 1, min_dim)`` and ``B`` of shape ``(max_dim, n_bases, r)``, where
  ``min_dim``/``max_dim`` are the smaller/larger of the largest wrapped module's out and in
  features (each the largest over the wrapped modules) and ``n_bases = ceil(min_dim / r)``
  (enough bases for a full-rank update);
- dense (the default): Kaiming-uniform (``a = sqrt(5)``) in bfloat16 (float16 where a CUDA
  device lacks bfloat16, as PEFT picks), ``A`` first, then ``B`` one basis ``(max_dim, 1, r)``
  at a time, all from one CPU generator; sparse: uniform float32 draws turned ternary (-1 below
  ``1 / (2s)``, 1 above ``1 - 1 / (2s)``, else 0) with ``s = 3`` (``sparse``) or
  ``sqrt(min_dim)`` (``very_sparse``); each then divided by its own standard deviation.
"""

from __future__ import annotations

import math

import torch

from kernel_core_randlora.config import RandLoraConfig


def n_bases(min_dim: int, r: int) -> int:
    """How many rank-``r`` bases make an update of rank ``min_dim``: ``ceil(min_dim / r)``."""
    return -(-min_dim // r)


def draw_bases(config: RandLoraConfig, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` for modules up to ``out_features`` x ``in_features``, on the CPU, in the dtype
    they are drawn in (the caller casts them to the base weight's, as PEFT does)."""
    max_dim, min_dim = max(out_features, in_features), min(out_features, in_features)
    bases = n_bases(min_dim, config.r)
    generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)
    if config.sparse or config.very_sparse:
        sparsity = math.sqrt(min_dim) if config.very_sparse else 3
        A = _ternary(torch.rand((config.r, 1, min_dim), generator=generator), sparsity)
        B = _ternary(torch.rand((max_dim, bases, config.r), generator=generator), sparsity)
    else:
        dtype = torch.float16 if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else torch.bfloat16
        A = _kaiming((config.r, 1, min_dim), dtype, generator)
        B = torch.cat([_kaiming((max_dim, 1, config.r), dtype, generator) for _ in range(bases)], dim=1)
    return A / A.std(), B / B.std()


def _kaiming(shape: tuple[int, int, int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.init.kaiming_uniform_(torch.empty(shape, dtype=dtype), a=math.sqrt(5), generator=generator)


def _ternary(uniform: torch.Tensor, sparsity: float) -> torch.Tensor:
    ternary = torch.zeros(uniform.shape)
    ternary[uniform < 1 / (2 * sparsity)] = -1
    ternary[uniform > 1 - 1 / (2 * sparsity)] = 1
    return ternary
