"""Conformance suite for batched LoRA kernels (serving many adapters in one step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from kernel_core.contracts.lora import NO_SLOT, LoRABatch, LoRAKernel
from kernel_core.contracts.records import LoRAKernelSpec, PluginKind
from kernel_core_sdk.conformance import _reference
from kernel_core_sdk.conformance._plugin import PluginUnderTest

N = NO_SLOT
#: Each slot's adapter rank; the stacked factors are zero-padded to the largest.
RANKS = (2, 4, 1, 3)
IN_FEATURES, OUT_FEATURES = 16, 24  # different, so a transposed factor fails
#: Each token's slot, per batch. "interleaved" gives a slot several runs (segments and slot_rows
#: differ, as when requests of different adapters alternate); the others give each slot one run
#: (a kernel may then use slices). The last slot is in use where NO_SLOT rows are too, so a
#: kernel that indexes the factors with NO_SLOT (-1) adds the last adapter to rows it must leave.
BATCHES: dict[str, list[int]] = {
    "interleaved": [0, 2, N, 0, 1, 2, N, 3, 1, 0, 3],
    "contiguous": [1, 1, 1, N, N, 3, 3, 0, 2, 2, 2, 2],
    "one-token-per-slot": [3, N, 0, 2, 1],
    "one-slot": [2, 2, 2, 2, 2, 2],
    "all-no-slot": [N, N, N, N, N],
}
#: Sizes no tile divides, for kernels that tile: odd input and output features, a largest rank
#: (7) that is no power of two, a slot of rank 0 (an adapter that leaves this projection alone:
#: zero factors) and one no token uses; a 37-token run of one slot (past two 16-row blocks and
#: one of 32 rows, with a remainder) beside short runs and NO_SLOT rows, 50 tokens in all.
ODD_RANKS = (5, 0, 7, 3, 1)
ODD_FEATURES = (19, 37)
ODD_BATCH = [2] * 37 + [N, N] + [0] * 3 + [1] * 2 + [N] + [3] + [2] * 4
#: Tolerances by dtype. bfloat16 keeps 8 significant bits: the rank-R intermediate
#: ``x @ A.T`` and the updated output are each rounded to it (up to 2**-8 relative, 0.4%),
#: and kernels may accumulate in a different order or precision than each other; 2e-2 leaves
#: room for that and still fails a missing, misplaced or wrong-slot update (of order 1).
TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@dataclass
class Case:
    """One call's inputs, as given and as kept before the call."""

    output: torch.Tensor
    x: torch.Tensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    slots: list[int]
    batch: LoRABatch
    before: tuple[torch.Tensor, ...]


def make_case(
    slots: list[int],
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    ranks: tuple[int, ...] = RANKS,
    features: tuple[int, int] = (IN_FEATURES, OUT_FEATURES),
) -> Case:
    """Random output, input and stacked factors (one adapter per slot of ``ranks``, ranks
    zero-padded; ``features`` is (in, out)), all of ``dtype`` on ``device``; to be called under
    ``torch.inference_mode``."""
    generator = torch.Generator().manual_seed(seed)
    rank, (in_features, out_features) = max(ranks), features
    output = torch.randn(len(slots), out_features, generator=generator)
    x = torch.randn(len(slots), in_features, generator=generator)
    lora_a = torch.randn(len(ranks), rank, in_features, generator=generator) / in_features**0.5
    lora_b = torch.randn(len(ranks), out_features, rank, generator=generator) / rank**0.5
    for slot, r in enumerate(ranks):
        lora_a[slot, r:] = 0
        lora_b[slot, :, r:] = 0
    output, x, lora_a, lora_b = (t.to(device=device, dtype=dtype) for t in (output, x, lora_a, lora_b))
    before = tuple(t.clone() for t in (output, x, lora_a, lora_b))
    return Case(output, x, lora_a, lora_b, slots, LoRABatch.from_token_slots(slots, device), before)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that comparing them compares bit for bit (NaN, -0.0 included)."""
    return tensor.detach().cpu().contiguous().view(torch.uint8)


class LoRAKernelConformance(PluginUnderTest):
    """Subclass as ``TestMyKernel(LoRAKernelConformance)`` to check a batched LoRA kernel.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the kernel's record name, when the module registers several.

    Fixtures you may override:

    - ``lora_kernel``: the instance under test; defaults to the class called with no arguments.
    - ``device``: where the kernel runs (default CPU); the suite skips when the record's
      ``device_types`` exclude it. The reference runs on the CPU in float64.

    ``apply`` must add each token's adapter update to ``output`` in place (the tensor passed
    in), matching a per-token reference within 1e-5 in float32 and 2e-2 in bfloat16, for
    batches whose slots are interleaved, contiguous, one token each or all ``NO_SLOT``, and at
    odd sizes (:data:`ODD_BATCH`: a rank that is no power of two, a rank-0 slot, long runs); rows
    without a slot stay bit for bit as they were, even when their input is NaN, and ``x`` and
    the factors are not modified.
    """

    kind = PluginKind.LORA_KERNEL
    contract = LoRAKernel

    @pytest.fixture
    def lora_kernel(
        self,
        construct: Callable[..., LoRAKernel],
        plugin_spec: LoRAKernelSpec,
        device: torch.device,
        device_types: frozenset[str],
    ) -> LoRAKernel:
        if device.type not in device_types:
            pytest.skip(f"{plugin_spec.name!r} does not run on {device.type} ({sorted(device_types)})")
        return construct()

    def test_batches_exercise_both_forms(self) -> None:
        """The batches above do what their comments say (a check of the suite itself)."""
        forms = {name: LoRABatch.from_token_slots(slots, torch.device("cpu")) for name, slots in BATCHES.items()}
        assert len(forms["interleaved"].segments) > len(forms["interleaved"].slot_rows)
        assert all(len(b.segments) == len(b.slot_rows) for name, b in forms.items() if name != "interleaved")
        assert forms["all-no-slot"].empty

    @pytest.mark.parametrize("dtype", sorted(TOLERANCE, key=str), ids=lambda d: str(d).removeprefix("torch."))
    @pytest.mark.parametrize("batch", sorted(BATCHES))
    def test_matches_per_token_reference(
        self, lora_kernel: LoRAKernel, device: torch.device, batch: str, dtype: torch.dtype
    ) -> None:
        with torch.inference_mode():
            case = make_case(BATCHES[batch], dtype, device)
            lora_kernel.apply(case.output, case.x, case.lora_a, case.lora_b, case.batch)
        check(case, dtype)

    @pytest.mark.parametrize("dtype", sorted(TOLERANCE, key=str), ids=lambda d: str(d).removeprefix("torch."))
    def test_odd_sizes_ranks_and_long_runs(self, lora_kernel: LoRAKernel, device: torch.device, dtype: torch.dtype) -> None:
        """:data:`ODD_BATCH` at :data:`ODD_FEATURES` with :data:`ODD_RANKS`: remainders in every tiled dimension."""
        with torch.inference_mode():
            case = make_case(ODD_BATCH, dtype, device, seed=2, ranks=ODD_RANKS, features=ODD_FEATURES)
            lora_kernel.apply(case.output, case.x, case.lora_a, case.lora_b, case.batch)
        check(case, dtype)

    def test_rows_without_a_slot_ignore_their_input(self, lora_kernel: LoRAKernel, device: torch.device) -> None:
        """Rows without a slot may hold anything (padding): NaN there must not reach any row."""
        slots = BATCHES["interleaved"]
        with torch.inference_mode():
            case = make_case(slots, torch.float32, device, seed=1)
            case.x[[row for row, slot in enumerate(slots) if slot == NO_SLOT]] = float("nan")
            case.before = (case.before[0], case.x.clone(), *case.before[2:])
            lora_kernel.apply(case.output, case.x, case.lora_a, case.lora_b, case.batch)
        check(case, torch.float32)


def check(case: Case, dtype: torch.dtype) -> None:
    """The ``output`` tensor passed to ``apply`` now holds the reference result (the kernel
    works in place: a result returned or written to a new tensor leaves it unchanged and
    fails); nothing else changed."""
    output = case.output
    output_before, *inputs_before = case.before
    assert output.dtype == dtype and output.shape == output_before.shape
    expected = _reference.lora(output_before, inputs_before[0], inputs_before[1], inputs_before[2], case.slots)
    without = [row for row, slot in enumerate(case.slots) if slot == NO_SLOT]
    with_slot = [row for row, slot in enumerate(case.slots) if slot != NO_SLOT]
    assert torch.equal(bits(output[without]), bits(output_before[without])), (
        f"rows {without} have no slot (NO_SLOT) and must be left untouched, bit for bit"
    )
    if with_slot:
        tolerance = TOLERANCE[dtype]
        torch.testing.assert_close(
            output[with_slot].cpu().double(), expected[with_slot], atol=tolerance, rtol=tolerance,
            msg=lambda m: f"output must gain (x @ lora_a[s].T) @ lora_b[s].T in place, per token: {m}",
        )
    for name, now, kept in zip(("x", "lora_a", "lora_b"), (case.x, case.lora_a, case.lora_b), inputs_before):
        assert torch.equal(bits(now), bits(kept)), f"apply must not modify {name}"
