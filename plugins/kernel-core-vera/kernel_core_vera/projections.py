"""VeRA's shared projections: two frozen random matrices per adapter, drawn once per model from
``projection_prng_key`` (so a file saved without them gets the same ones back) and kept on
``PeftModel.base_model`` as ``vera_A`` and ``vera_B``.

Each layer uses the top-left block of its size: ``A[:, :in_features]`` and ``B[:out_features, :]``;
the matrices are as large as the largest wrapped module in each dimension.
"""

from __future__ import annotations

import math

import torch

from kernel_core.contracts.buffers import BufferDict


class Projections:
    """Where a layer finds the shared ``A`` and ``B`` of each adapter (not a module, so the layer
    does not own them: they are saved once, on ``base_model``, not once per layer)."""

    def __init__(self, vera_A: BufferDict, vera_B: BufferDict) -> None:
        self.vera_A = vera_A
        self.vera_B = vera_B

    def __contains__(self, adapter_name: str) -> bool:
        return adapter_name in self.vera_A

    def sliced(self, adapter_name: str, in_features: int, out_features: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's blocks ``A[:, :in]`` (r, in) and ``B[:out, :]`` (out, r), on ``like``'s device and dtype."""
        vera_A, vera_B = self.vera_A[adapter_name], self.vera_B[adapter_name]
        if vera_A.shape[1] < in_features or vera_B.shape[0] < out_features:
            raise ValueError(
                f"VeRA adapter {adapter_name!r}: the shared projections vera_A {tuple(vera_A.shape)} and vera_B "
                f"{tuple(vera_B.shape)} are smaller than a wrapped module ({out_features} out, {in_features} in)"
            )
        return vera_A[:, :in_features].to(like), vera_B[:out_features, :].to(like)

    def draw(
        self, adapter_name: str, r: int, in_features: int, out_features: int, seed: int, *,
        persistent: bool = True, device: torch.device | None = None,
    ) -> None:
        """Draw ``A`` (r, in) then ``B`` (out, r) on the CPU from one generator seeded with
        ``seed``, each uniform in +-sqrt(6 / fan_in) (Kaiming-uniform with gain sqrt(2)), as PEFT
        does, so that the same key gives the same matrices on every machine; then move them."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.vera_A.put(adapter_name, _kaiming_uniform((r, in_features), generator).to(device), persistent)
        self.vera_B.put(adapter_name, _kaiming_uniform((out_features, r), generator).to(device), persistent)


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)
