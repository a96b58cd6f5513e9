"""IA3's projection hook against peft's own ``IA3Layer.forward``, row by row: the rows of IA3 slots
are scaled as peft scales them (in float32, rounded once to the model's dtype), every other row
is left bit-identical, and the GEMM's input is never changed in place. The engine-level oracle
tests (peft-made adapters served beside LoRA and base rows) are tests/engine/test_ia3_serving.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kernel_core.contracts.serving import NO_SLOT, SlotBatch
from kernel_core_ia3.serving import IA3Projection, _Step

IN, OUT, SLOTS = 12, 10, 3


def _peft_layer(base: nn.Linear, vector: torch.Tensor, feedforward: bool) -> nn.Module:
    """peft's IA3 ``Linear`` around ``base`` with ``vector`` as its (float32) ``ia3_l``."""
    from peft import IA3Config
    from peft.tuners.ia3.layer import Linear

    layer = Linear(base, "default", config=IA3Config(), is_feedforward=feedforward)
    layer.ia3_l["default"] = nn.Parameter(vector.view(1, IN) if feedforward else vector.view(OUT, 1))
    return layer


#: Each token's slot: mixed with other rows (slot 1 holds another kind's adapter: not in this batch),
#: every row on one IA3 adapter, every row on one of two.
SLOT_ROWS = {"mixed": [NO_SLOT, 2, 2, NO_SLOT, 0, 1, 0], "one": [2] * 5, "two": [0, 0, 2, 0, 2]}


@pytest.mark.parametrize("slots", SLOT_ROWS.values(), ids=SLOT_ROWS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("feedforward", [True, False], ids=["input", "output"])
def test_ia3_rows_equal_peft_and_other_rows_are_untouched(slots: list[int], dtype: torch.dtype, feedforward: bool) -> None:
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, bias=True).to(dtype)
    step = _Step()
    projection = IA3Projection(IN, OUT, SimpleNamespace(max_slots=SLOTS, device=torch.device("cpu")), step)
    vectors = {slot: torch.randn(IN if feedforward else OUT) * 2 for slot in (0, 2)}
    for slot, vector in vectors.items():
        projection.write(slot, (vector, None) if feedforward else (None, vector))
    x = torch.randn(len(slots), IN, dtype=dtype)
    mine = [s if s in vectors else NO_SLOT for s in slots]
    step.set(SlotBatch.from_token_slots(mine, torch.device("cpu")))
    before = x.clone()
    gemm_input = projection.before(x)
    output = nn.functional.linear(gemm_input, base.weight, base.bias)
    projection.after(output, gemm_input)
    assert torch.equal(x, before)  # the input is never changed in place
    with torch.no_grad():  # peft's layer on the whole batch: the same GEMM shape, so bit-equal rows
        want = {NO_SLOT: base(x), **{slot: _peft_layer(base, v, feedforward)(x) for slot, v in vectors.items()}}
    for row, slot in enumerate(mine):
        assert torch.equal(output[row], want[slot][row]), (row, slot)


def test_a_step_without_ia3_rows_or_without_this_projection_skips_it() -> None:
    step = _Step()
    projection = IA3Projection(IN, OUT, SimpleNamespace(max_slots=SLOTS, device=torch.device("cpu")), step)
    projection.write(1, (None, torch.full((OUT,), 3.0)))
    x, output = torch.randn(2, IN), torch.randn(2, OUT)
    kept = output.clone()
    for batch in (None, SlotBatch.from_token_slots([0, NO_SLOT], torch.device("cpu"))):  # slot 0 leaves it alone
        step.set(batch)
        assert projection.before(x) is x
        projection.after(output, x)
        assert torch.equal(output, kept)
    projection.write(1, (None, None))  # another IA3 adapter in the slot, not scaling this projection
    assert projection.output_slots == set() and torch.equal(projection.outputs[1], torch.ones(OUT))
