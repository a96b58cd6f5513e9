"""BOFT's geometry for one layer and adapter: the block layout, the butterfly permutations, and
the orthogonal matrix ``B = M_(n-1) ... M_1 M_0`` with ``M_i = P_i diag(Q_i1, ..., Q_iD) P_i^T``,
each ``Q`` the Cayley transform of a learned block (PEFT's ``boft_R``, ``(n, D, H, H)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """``blocks`` blocks of ``block_size`` along ``in_features``, in ``factors`` butterfly factors."""

    in_features: int
    blocks: int
    block_size: int
    factors: int

    @classmethod
    def of(cls, in_features: int, block_size: int, block_num: int, factors: int, module: str | None) -> Layout:
        """The layout for a layer, or a ``ValueError`` naming the module and PEFT's rule it breaks."""
        where = f"BOFT on {module or 'a layer'} (in_features={in_features})"
        extra = factors - 1  # factors beyond the first halve the blocks each time
        if block_num:
            if in_features % block_num:
                raise ValueError(f"{where}: boft_block_num={block_num} does not divide in_features")
            if extra and (extra > block_num.bit_length() - 1 or block_num % 2**extra):
                raise ValueError(f"{where}: boft_block_num={block_num} must be a multiple of 2^(boft_n_butterfly_factor-1)={2**extra}")
            block_size = in_features // block_num
        else:
            if in_features % block_size:
                raise ValueError(f"{where}: boft_block_size={block_size} does not divide in_features")
            if extra and in_features % (block_size * 2**extra):
                raise ValueError(
                    f"{where}: boft_block_size={block_size} times 2^(boft_n_butterfly_factor-1)={2**extra} does not divide in_features"
                )
            block_num = in_features // block_size
        if extra and (block_num % 2 or block_size % 2):
            raise ValueError(f"{where}: with butterfly factors, boft_block_num={block_num} and boft_block_size={block_size} must be even")
        return cls(in_features, block_num, block_size, factors)

    def permutations(self) -> torch.Tensor:
        """``(factors, in_features)``: factor ``i`` gathers, within each group of
        ``in_features / (blocks / 2^i)`` features, the even half-blocks before the odd ones
        (the identity when there is one factor)."""
        if self.factors == 1:
            return torch.arange(self.in_features).unsqueeze(0)
        half = self.block_size // 2
        rows = []
        for i in range(self.factors):
            group = self.in_features // (self.blocks // 2**i)
            chunks = list(range(0, group // half, 2)) + list(range(1, group // half, 2))
            order = torch.cat([torch.arange(c * half, (c + 1) * half) for c in chunks])
            rows.append(torch.cat([start + order for start in range(0, self.in_features, group)]))
        return torch.stack(rows)


def cayley(blocks: torch.Tensor) -> torch.Tensor:
    """``(I - S)(I + S)^-1`` for ``S`` the skew-symmetric part of each ``(..., H, H)`` block."""
    skew = 0.5 * (blocks - blocks.transpose(-2, -1))
    eye = torch.eye(blocks.shape[-1], device=blocks.device).expand_as(skew)
    return torch.linalg.solve(eye + skew, eye - skew, left=False).to(blocks.dtype)


def butterfly_matrix(rotations: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """``B`` from the orthogonal blocks ``(factors, D, H, H)`` and the factors' permutations."""
    result = None
    for blocks, order in zip(rotations, permutations.to(rotations.device)):
        factor = torch.block_diag(*blocks)[order][:, order]  # P diag(Q) P^T, P the rows of I in ``order``
        result = factor if result is None else factor @ result
    assert result is not None
    return result


def drop_blocks(rotations: torch.Tensor, p: float) -> torch.Tensor:
    """Training-time dropout as PEFT's BOFT: in one random factor, ``int(p * D)`` random blocks
    become the identity."""
    factors, blocks, size, _ = rotations.shape
    dropped = torch.zeros(factors, blocks, 1, 1, device=rotations.device)
    dropped[torch.randint(0, factors, (1,)).item(), torch.randperm(blocks)[: int(p * blocks)]] = 1
    eye = torch.eye(size, device=rotations.device, dtype=rotations.dtype)
    return (1 - dropped) * rotations + dropped * eye
