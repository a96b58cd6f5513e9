"""AttentionMetadata.for_layer: a layer's window view of the step's metadata, cheap and shared."""

from __future__ import annotations

import torch

from kernel_core.contracts.attention import AttentionMetadata


def metadata() -> AttentionMetadata:
    return AttentionMetadata(
        slot_mapping=torch.arange(5),
        query_start_loc=torch.tensor([0, 4, 5], dtype=torch.int32),
        seq_lens=torch.tensor([4, 9], dtype=torch.int32),
        block_tables=torch.tensor([[0, 0, 0], [1, 2, 3]], dtype=torch.int32),
        block_size=4,
        scale=0.25,
    )


def test_full_attention_layers_get_the_step_metadata_itself() -> None:
    step = metadata()
    assert step.sliding_window is None and step.for_layer(None) is step


def test_a_window_view_is_made_once_per_step_and_shares_everything_else() -> None:
    step = metadata()
    view = step.for_layer(3)
    assert view.sliding_window == 3 and view is not step
    assert step.for_layer(3) is view and view.for_layer(3) is view
    assert step.for_layer(5) is not view and step.for_layer(5).sliding_window == 5
    assert view.scratch is step.scratch  # backends derive their indices once per step
    assert view.slot_mapping is step.slot_mapping and view.block_tables is step.block_tables
    assert (view.seq_lens_host, view.query_lens_host) == ((4, 9), (4, 1))
    assert view.for_layer(None) is step
