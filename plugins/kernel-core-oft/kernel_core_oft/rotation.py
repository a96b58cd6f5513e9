"""One adapter's rotation on one layer: learned skew-symmetric blocks, their Cayley transforms
(orthogonal blocks), and the block-diagonal matrix they form along ``in_features``.

The learned tensor is PEFT's ``oft_R.weight``: one row per block (one row in all with
``block_share``), each row the strictly upper triangle of a skew-symmetric block, row by row.
"""

from __future__ import annotations

import torch
from torch import nn


class BlockRotation(nn.Module):
    """The orthogonal map ``x -> x R`` on ``in_features = blocks * block_size``, ``R`` block-diagonal."""

    def __init__(
        self, blocks: int, block_size: int, *, shared: bool, coft: bool, eps: float, neumann_terms: int | None
    ) -> None:
        super().__init__()
        self.blocks, self.block_size, self.shared = blocks, block_size, shared
        self.coft, self.eps = coft, eps
        #: None: the exact Cayley transform (a solve); otherwise that many Neumann-series terms.
        self.neumann_terms = neumann_terms
        self.weight = nn.Parameter(torch.zeros(1 if shared else blocks, block_size * (block_size - 1) // 2))

    def blocks_matrices(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The orthogonal blocks, ``(learned rows, block_size, block_size)``, computed in ``dtype``
        (default: the learned tensor's). With ``coft`` the learned rows are first pulled back
        into the eps-ball, in place, as PEFT does."""
        rows = self.weight if dtype is None else self.weight.to(dtype)
        if self.coft:
            with torch.no_grad():
                self.weight.copy_(self._constrained(rows))
            rows = self.weight if dtype is None else self.weight.to(dtype)
        return self._cayley(self._skew(rows))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x R`` over the last dimension, computed in the learned tensor's dtype."""
        blocks = self.blocks_matrices()
        if self.shared:
            blocks = blocks.repeat(self.blocks, 1, 1)
        pieces = x.to(blocks.dtype).reshape(*x.shape[:-1], self.blocks, self.block_size)
        return torch.einsum("...rk,rkc->...rc", pieces, blocks).reshape(x.shape).to(x.dtype)

    def matrix(self) -> torch.Tensor:
        """``R`` itself, ``(in_features, in_features)``: what merging multiplies the weight by.
        A half-precision adapter on the CPU is computed in float32 (as PEFT), returned in its dtype."""
        dtype = self.weight.dtype
        on_cpu_half = self.weight.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        blocks = self.blocks_matrices(torch.float32 if on_cpu_half else None)
        return torch.block_diag(*(blocks[0 if self.shared else i] for i in range(self.blocks))).to(dtype)

    def _skew(self, rows: torch.Tensor) -> torch.Tensor:
        upper = torch.zeros(rows.shape[0], self.block_size, self.block_size, dtype=rows.dtype, device=rows.device)
        i, j = torch.triu_indices(self.block_size, self.block_size, 1, device=rows.device)
        upper[:, i, j] = rows
        return upper - upper.transpose(-2, -1)

    def _cayley(self, skew: torch.Tensor) -> torch.Tensor:
        """``(I - S)(I + S)^-1``, exactly or by PEFT's Neumann series for ``(I + S)^-1``:
        ``I + 2S + 2S^2 + ... + 2S^(n-2) + S^(n-1)`` (at least up to ``S^3`` once n > 2)."""
        eye = torch.eye(self.block_size, dtype=skew.dtype, device=skew.device).expand_as(skew)
        if self.neumann_terms is None:
            return torch.linalg.solve(eye + skew, eye - skew, left=False)
        result = eye.clone()
        if self.neumann_terms > 1:
            result.add_(skew, alpha=2.0)
        if self.neumann_terms > 2:
            power = torch.bmm(skew, skew)
            result.add_(power, alpha=2.0)
            for _ in range(3, self.neumann_terms - 1):
                power = torch.bmm(power, skew)
                result.add_(power, alpha=2.0)
            result.add_(torch.bmm(power, skew))
        return result

    def _constrained(self, rows: torch.Tensor) -> torch.Tensor:
        """COFT: each skew block scaled back onto the sphere of radius ``eps / sqrt(blocks)``
        (Frobenius norm) when it lies outside it."""
        skew = self._skew(rows)
        radius = self.eps * (1 / torch.tensor(float(skew.shape[0])).sqrt())
        norm = torch.linalg.matrix_norm(skew, keepdim=True)
        projected = torch.where(norm <= radius, skew, radius * (skew / norm))
        i, j = torch.triu_indices(self.block_size, self.block_size, 1, device=rows.device)
        return projected[:, i, j]
